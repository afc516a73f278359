"""Outputs by reference at the size batches run: plans that Temporal used to end (a history past
its size limit, a workflow task past the message limit) succeed, and a task adds the same bytes to
its plan's history whatever the size of its output."""
from __future__ import annotations

import pytest

from helpers import free_port, model_entry, plan_ended, plan_history, running_bundle, submit_plan, work_section, write_rig

pytestmark = pytest.mark.slow
ACTIVITY_EVENTS = {f"activity_task_{kind}_event_attributes" for kind in ("scheduled", "started", "completed")}

WAV_6S = ("python3 -c \"import math, struct, wave; w = wave.open('output.wav', 'wb'); w.setnchannels(1); "
          "w.setsampwidth(2); w.setframerate(16000); w.writeframes(b''.join(struct.pack('<h', int(8000 * "
          "math.sin(i / 8))) for i in range(96000)))\"")


@pytest.fixture(scope="module")
def big(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("scale")
    whisper = {"model_dir": str(models["whisper"]), "gpu": 2, "port": free_port(), "max_new_tokens": 4}
    rig = write_rig(folder, {"m": model_entry(models["gguf"], [0])}, whisper,
                    work=work_section(concurrency={"cpu": 4, "script": 2}, plan_window=200))
    with running_bundle(folder, rig) as b:
        yield b


def _history_bytes(b, plan_id: str) -> int:
    return sum(e.ByteSize() for e in plan_history(b.rig, plan_id))


def _task_and_history_bytes(b, plan_id: str) -> tuple[int, int]:
    """The bytes of the plan's activity events (what its tasks add) and of its whole history, whose
    workflow-task events vary with how Temporal batches completions (19 against 22 for one plan)."""
    events = plan_history(b.rig, plan_id)
    return sum(e.ByteSize() for e in events if e.WhichOneof("attributes") in ACTIVITY_EVENTS), \
        sum(e.ByteSize() for e in events)


def _cpu(name: str, command: str, **more) -> dict:
    return {"name": name, "class": "cpu", "command": command, **more}


def test_a_task_adds_the_same_history_bytes_whatever_its_output_size(big, report):
    """20 tasks of 1 KiB outputs against 20 of 1 MiB, each read by a dependent where it is."""
    sizes = {}
    for size in (1024, 2**20):
        tasks = [_cpu(f"w{i}", f"head -c {size} /dev/zero > output") for i in range(20)]
        tasks += [_cpu(f"r{i}", 'wc -c < "$INPUT_X" > output', depends_on=[f"w{i}"], inputs={"x": f"@w{i}"})
                  for i in range(20)]
        plan_id = submit_plan(big, tasks, name=f"size{size}")
        view = plan_ended(big, plan_id, timeout=180)
        assert view["outcome"] == "succeeded", view
        assert all(open(view["tasks"][f"r{i}"]["result"]["output"]).read().strip() == str(size) for i in range(20))
        result = view["tasks"]["w0"]["result"]
        assert "output_data" not in result and result["output_url"].endswith("/w0/attempt-1/output")
        sizes[size] = _task_and_history_bytes(big, plan_id)
    per_task = (sizes[2**20][0] - sizes[1024][0]) / 40
    report(f"history bytes per task: {sizes[1024][1] / 40:.0f} (1 KiB outputs), {sizes[2**20][1] / 40:.0f} (1 MiB outputs);"
           f" of which the tasks' own events: {sizes[1024][0] / 40:.0f}, {sizes[2**20][0] / 40:.0f}")
    assert abs(per_task) < 64, sizes  # (a few digits of durations and sizes differ; 1 KiB to 1 MiB: none of it)
    assert abs(sizes[2**20][1] - sizes[1024][1]) < 2**14, sizes  # the workflow-task events: a few batches, no output


def test_2000_tasks_of_40_kib_outputs_succeed_within_the_history_limit(big, report):
    """Terminated by Temporal after about 950 tasks when each carried its 40 KB output."""
    tasks = [_cpu(f"t{i}", "head -c 40000 /dev/urandom > output") for i in range(2000)]
    plan_id = submit_plan(big, tasks, name="many")
    view = plan_ended(big, plan_id, timeout=600)
    assert view["outcome"] == "succeeded" and view["status"] == "completed", {k: view[k] for k in ("outcome", "status")}
    size = _history_bytes(big, plan_id)
    report(f"2000 tasks of 40 KB outputs: history {size / 2**20:.1f} MiB (Temporal's limit: 50 MiB)")
    assert size < 10 * 2**20


def test_a_1_mb_output_read_by_500_dependents(big):
    tasks = [_cpu("one", "head -c 1000000 /dev/urandom > output")]
    tasks += [_cpu(f"d{i}", 'wc -c < "$INPUT_X" > output', depends_on=["one"], inputs={"x": "@one"}) for i in range(500)]
    view = plan_ended(big, submit_plan(big, tasks, name="wide"), timeout=600)
    assert view["outcome"] == "succeeded", view["outcome"]
    assert {open(view["tasks"][f"d{i}"]["result"]["output"]).read().strip() for i in range(500)} == {"1000000"}


def test_24_transcriptions_of_one_clip_made_by_a_cpu_task(big):
    """Terminated at once (GrpcMessageTooLarge) when each transcription's input carried the 192 KB clip."""
    tasks = [_cpu("clip", WAV_6S)]
    tasks += [{"name": f"hear{i}", "class": "script", "depends_on": ["clip"],
               "transcribe": {"audio": "@clip", "format": "text"}} for i in range(24)]
    view = plan_ended(big, submit_plan(big, tasks, name="hear"), timeout=600)
    assert view["outcome"] == "succeeded", {n: t.get("error") for n, t in view["tasks"].items() if t.get("error")}
    assert view["tasks"]["clip"]["result"]["output"].endswith("output.wav")
