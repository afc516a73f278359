"""Record plan workflow histories with the code checked out now, for test_work.py's replay of
histories an older release made (a running plan must survive an upgrade of its workers).

    .venv/bin/python tests/histories/record.py RELEASE     (writes tests/histories/RELEASE-*.json)

Plans: a cascade with a retry, a carried output and priorities; a cancel; with
work.plan_window 2, a plan whose tasks wait for the window; (since ad70cdc) the cascade
retried, reusing what succeeded (`llamarig retry`); and (since 7f87c30) an expected_s in the
cascade, and a plan whose first task has the duration the rig learned from the cascade's; (since
for_each) a plan of two maps, one over the other's items, and one of its slices (MapSlice)."""
from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import (model_entry, plan_ended, plan_view, running_bundle, submit_plan, wait_for,  # noqa: E402
                     work_section, write_rig)
from llamarig.backend.models_make import make_gguf  # noqa: E402
from llamarig.work import engine  # noqa: E402


def _cpu(name: str, command, **more) -> dict:
    return {"name": name, "class": "cpu", "command": command, **more}


def plans(b) -> dict[str, str]:
    cascade = submit_plan(b, [_cpu("a", "exit 4", retries=1), _cpu("b", "true", depends_on=["a"]),
                              _cpu("x", "echo fine > output", priority=9, expected_s=2),
                              _cpu("y", "cat $INPUT_X", depends_on=["x"], inputs={"x": "@x"})])
    windowed = submit_plan(b, [_cpu(f"w{i}", "true", priority=1 + i % 10) for i in range(8)]
                           + [_cpu("last", "true", priority=10, depends_on=["w0", "w7"])])
    cancelled = submit_plan(b, [_cpu("long", "sleep 300"), _cpu("after", "true", depends_on=["long"])])
    wait_for(lambda: plan_view(b, cancelled)["tasks"]["long"]["state"] == "running", 60, "long running")
    assert b.post(f"/admin/plans/{cancelled}/cancel").status_code == 202
    for plan_id in (cascade, windowed, cancelled):
        plan_ended(b, plan_id)
    r = b.post(f"/admin/plans/{cascade}/retry")  # x and y reused; a fails again, b is not run
    assert r.status_code == 201, r.text
    retried = plan_ended(b, r.json()["plan_id"])["plan_id"]
    learned = submit_plan(b, [_cpu("again", "echo fine > output"), _cpu("then", "true", depends_on=["again"])])
    assert plan_ended(b, learned)["tasks"]["again"]["expected_from"] == "learned"  # from x in the cascade
    mapped = submit_plan(b, [_cpu("list", "seq 1 12 > output"),
                             _cpu("sq", "test {item} -ne 5 && echo $(( {item} * {item} )) > output", depends_on=["list"],
                                  for_each={"lines": "@list"}, max_failed=1, retries=0),
                             _cpu("plus", 'echo $(( $(cat "$INPUT_S") + 1 )) > output', depends_on=["sq"],
                                  for_each={"items_of": "@sq"}, inputs={"s": "@sq[{index}]"}, max_failed=1),
                             _cpu("sum", 'wc -l < "$INPUT_M" > output', depends_on=["plus"], inputs={"m": "@plus"})])
    assert plan_ended(b, mapped)["outcome"] == "succeeded"
    return {"cascade": cascade, "windowed": windowed, "cancelled": cancelled, "retried": retried, "learned": learned,
            "mapped": mapped, "mapslice": f"{mapped}.plus.0"}


async def save(rig, ids: dict[str, str], release: str) -> None:
    client = await engine.connect(rig)
    for name, plan_id in ids.items():
        history = await client.get_workflow_handle(plan_id).fetch_history()
        (HERE / f"{release}-{name}.json").write_text(history.to_json())


def main(release: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rig = write_rig(folder, {"m": model_entry(make_gguf(folder / "tiny.gguf"), [0])},
                        work=work_section(plan_window=2))
        with running_bundle(folder, rig) as b:
            b.wait_ready()
            asyncio.run(save(b.rig, plans(b), release))


if __name__ == "__main__":
    main(sys.argv[1])
