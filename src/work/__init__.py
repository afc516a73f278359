"""The work layer: plans of cpu, script and llm tasks run by workers on Temporal."""
