"""for_each on a real bundle and a real Temporal: over a literal list, a glob resolved at submit
and the lines of a dependency's output (dynamic mapping); {item} and {index} in commands and
inputs; the manifest its dependents read; a failure policy; retry reusing items one by one; maps
cut into slices (child workflows) smaller than the map."""
from __future__ import annotations

import json

import pytest

from helpers import llamarig, model_entry, plan_ended, running_bundle, submit_plan, wait_for, work_section, write_rig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("map")
    rig = write_rig(folder, {"m": model_entry(models["gguf"], [0])},
                    work=work_section(concurrency={"cpu": 4}, map_slice=40, retries=0))
    with running_bundle(folder, rig) as b:
        yield b


def _cpu(name: str, command, **more) -> dict:
    return {"name": name, "class": "cpu", "command": command, **more}


def _manifest(view: dict, task: str) -> list[dict]:
    with open(view["tasks"][task]["result"]["output"]) as f:
        return [json.loads(line) for line in f]


def test_literal_items_substitute_item_and_index_quoted_in_a_shell_command(mapped):
    items = ["plain", "two words", "it's \"quoted\"", "$HOME;rm -rf x", 7]
    tasks = [_cpu("each", 'printf "%s|%s|%s" {index} {item} "$LLAMARIG_ITEM" > output', for_each={"items": items}),
             _cpu("argv", ["sh", "-c", 'printf "%s" "$1" > output', "-", "<{item}>"], for_each={"items": items[:2]}),
             _cpu("after", 'cat "$INPUT_M" > output', depends_on=["each"], inputs={"m": "@each"})]
    view = plan_ended(mapped, submit_plan(mapped, tasks, name="lit"), timeout=120)
    assert view["outcome"] == "succeeded", view
    lines = _manifest(view, "each")
    assert [line["index"] for line in lines] == list(range(5)) and {line["state"] for line in lines} == {"succeeded"}
    assert [open(line["output"]).read() for line in lines] == [f"{i}|{item}|{item}" for i, item in enumerate(map(str, items))]
    assert [open(line["output"]).read() for line in _manifest(view, "argv")] == ["<plain>", "<two words>"]
    assert open(view["tasks"]["after"]["result"]["output"]).read().count("\n") == 5  # the manifest as its input
    assert view["tasks"]["each"]["map"] | {"states": {"succeeded": 5}} == view["tasks"]["each"]["map"]
    assert lines[3]["output"].endswith("/tasks/each.3/attempt-1/output") and lines[3]["output_url"]


def test_a_glob_is_resolved_at_submit_and_an_empty_one_refused(mapped, tmp_path):
    for name in ("b.wav", "a.wav", "c.txt", "sub/d.wav"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    task = _cpu("each", "cat {item} > output", for_each={"glob": str(tmp_path / "**" / "*.wav")})
    r = mapped.post("/admin/plans", json={"plan": {"name": "glob", "tasks": [task]}})
    assert r.status_code == 201 and r.json()["items"] == {"each": 3}, r.text
    view = plan_ended(mapped, r.json()["plan_id"], timeout=120)
    assert [(line["item"].removeprefix(str(tmp_path) + "/"), open(line["output"]).read())
            for line in _manifest(view, "each")] == [("a.wav", "a.wav"), ("b.wav", "b.wav"), ("sub/d.wav", "sub/d.wav")]
    none = dict(task, for_each={"glob": str(tmp_path / "*.flac")})
    r = mapped.post("/admin/plans", json={"plan": {"name": "glob", "tasks": [none]}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "glob_empty", r.text
    assert "tasks.each.for_each.glob" in r.json()["error"]["message"]


def test_lines_of_a_dependency_map_across_slices_and_the_cli_shows_the_group(mapped):
    """300 items in slices of 40: 8 child workflows, two at a time; the manifest in item order."""
    tasks = [_cpu("list", "seq 100 399 > output"),
             _cpu("sq", "echo $(( {item} * {item} )) > output", depends_on=["list"], for_each={"lines": "@list"}),
             _cpu("sum", "wc -l < \"$INPUT_M\" > output", depends_on=["sq"], inputs={"m": "@sq"})]
    plan_id = submit_plan(mapped, tasks, name="lines")
    view = plan_ended(mapped, plan_id, timeout=300)
    assert view["outcome"] == "succeeded", view["tasks"]["sq"]
    lines = _manifest(view, "sq")
    assert [line["item"] for line in lines] == [str(n) for n in range(100, 400)]
    assert all(int(open(line["output"]).read()) == int(line["item"]) ** 2 for line in lines[::37])
    assert open(view["tasks"]["sum"]["result"]["output"]).read().strip() == "300"
    assert view["tasks"]["sq"]["map"]["slices"] == 8 and view["tasks"]["sq"]["map"]["slices_done"] == 8
    shown = llamarig(mapped.rig_path, "plan", plan_id)
    assert "300 items: 300 succeeded; slices 8/8" in shown.stdout, shown.stdout
    listed = llamarig(mapped.rig_path, "plan", plan_id, "--items", "sq")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 300 and " 299 succeeded  399 " in listed.stdout


def test_a_failure_policy_decides_whether_dependents_run(mapped):
    """Every tenth item fails. Of 100, max_failed 10% lets the dependent run. Of 200, 5 does not,
    and no slice starts once more than 5 failed (slices of 40, two at a time: the fourth does not;
    the items a slice has in Temporal already run)."""
    fail = "test $(( {index} % 10 )) -ne 3 && echo ok > output"
    for max_failed, outcome, count in (("10%", "succeeded", 100), (5, "failed", 200)):
        tasks = [_cpu("each", fail, for_each={"items": list(range(count))}, max_failed=max_failed),
                 _cpu("next", "true", depends_on=["each"])]
        view = plan_ended(mapped, submit_plan(mapped, tasks, name="policy"), timeout=300)
        each = view["tasks"]["each"]
        assert view["outcome"] == outcome and each["state"] == outcome, each
        if outcome == "succeeded":
            assert each["map"]["states"] == {"succeeded": 90, "failed": 10} and view["tasks"]["next"]["state"] == "succeeded"
            assert [f["index"] for f in each["map"]["failed_items"]] == list(range(3, 100, 10))
        else:
            assert "items failed (max_failed allows 5, counting items not run)" in each["error"], each["error"]
            assert view["tasks"]["next"]["state"] == "failed" and "not run" in view["tasks"]["next"]["error"]
            states = [line["state"] for line in _manifest(view, "each")]
            assert states[-40:] == ["not run"] * 40 and states.count("failed") >= 6, states


def test_retry_runs_only_the_items_that_failed(mapped, tmp_path):
    """Items 2 and 5 fail until a file exists; the retry reuses the other items' outputs."""
    gate = tmp_path / "open"
    command = f"if [ {{index}} = 2 ] || [ {{index}} = 5 ]; then test -e {gate} || exit 1; fi; echo {{item}} > output"
    tasks = [_cpu("each", command, for_each={"items": [f"x{i}" for i in range(8)]})]
    first = plan_ended(mapped, submit_plan(mapped, tasks, name="again"), timeout=120)
    assert first["outcome"] == "failed" and first["tasks"]["each"]["map"]["states"] == {"succeeded": 6, "failed": 2}
    gate.write_text("")
    r = mapped.post(f"/admin/plans/{first['plan_id']}/retry")
    assert r.status_code == 201, r.text
    second = plan_ended(mapped, r.json()["plan_id"], timeout=120)
    assert second["outcome"] == "succeeded", second["tasks"]["each"]
    lines = _manifest(second, "each")
    assert [line.get("reused_from") for line in lines] == [first["plan_id"] if i not in (2, 5) else None for i in range(8)]
    assert [open(line["output"]).read().strip() for line in lines] == [f"x{i}" for i in range(8)]


def test_a_map_over_a_maps_items_reads_each_items_output_and_skips_those_that_failed(mapped):
    """A batch's next step per item: items_of and @TASK[{index}] (50 items, two slices). Item 7
    fails in the first map, so the second does not run it; max_failed 1 on both lets the plan succeed."""
    tasks = [_cpu("list", "seq 1 50 > output"),
             _cpu("double", "test {item} -ne 8 && echo $(( {item} * 2 )) > output", depends_on=["list"],
                  for_each={"lines": "@list"}, max_failed=1),
             _cpu("plus", 'echo $(( $(cat "$INPUT_D") + 1 )) > output', depends_on=["double"],
                  for_each={"items_of": "@double"}, inputs={"d": "@double[{index}]"}, max_failed=1)]
    view = plan_ended(mapped, submit_plan(mapped, tasks, name="zip"), timeout=300)
    assert view["outcome"] == "succeeded", {n: view["tasks"][n].get("error") for n in ("double", "plus")}
    lines = _manifest(view, "plus")
    assert [line["item"] for line in lines] == [str(n) for n in range(1, 51)]
    assert lines[7]["state"] == "not run" and "its input double[7] failed" in lines[7]["error"], lines[7]
    assert all(int(open(line["output"]).read()) == 2 * int(line["item"]) + 1 for line in lines if line["index"] != 7)


def test_cancel_stops_every_running_item_and_the_plan_ends_cancelled(mapped):
    command = "trap 'echo term > termed; exit 0' TERM; echo started > started; while true; do sleep 0.05; done"
    plan_id = submit_plan(mapped, [_cpu("each", command + " # {index}", for_each={"items": list(range(6))})],
                          name="stop")
    folder = mapped.rig.run_dir / "work" / "plans" / plan_id / "tasks"
    every = [folder / f"each.{i}" / "attempt-1" / "started" for i in range(6)]
    started = wait_for(lambda: (up := [p for p in every if p.exists()]) and len(up) == 4 and up, 60,
                       "4 items running (concurrency.cpu)")
    assert mapped.post(f"/admin/plans/{plan_id}/cancel").status_code == 202
    view = plan_ended(mapped, plan_id, timeout=60)
    assert view["outcome"] == "cancelled" and view["tasks"]["each"]["state"] == "cancelled", view["tasks"]["each"]
    assert all((p.parent / "termed").exists() for p in started)
