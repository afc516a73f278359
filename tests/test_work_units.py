"""Work-layer pieces that need no engine: a class a rig runs none of is refused, retryably."""
from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from helpers import model_entry, work_section, write_rig
from llamarig.shared.rig import load_rig
from llamarig.work.activities import Activities
from llamarig.work.api_client import ComputeApi


def test_a_class_with_concurrency_0_is_refused_for_another_rig_to_take(tmp_path):
    rig = load_rig(write_rig(tmp_path, {"m": model_entry(tmp_path / "m.gguf", [0])},
                             work=work_section(concurrency={"llm": 0})))
    acts = Activities(rig, "gpu", "work-gpu@here", ComputeApi("http://127.0.0.1:9", None, 5))
    with pytest.raises(ApplicationError) as e:
        acts._takes("llm")
    assert e.value.type == "NotHere" and not e.value.non_retryable and "work.concurrency.llm: 0" in e.value.message
    acts._takes("script")  # script: 1 here
