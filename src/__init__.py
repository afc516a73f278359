"""llamarig: a compute bundle for a multi-GPU rig."""
