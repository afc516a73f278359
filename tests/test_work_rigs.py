"""Past one rig: two bundles on this machine (their own rigs, ports and run folders, as two
hosts would have) whose workers poll one Temporal, the first bundle's embedded server; a rig
whose cluster does not have its namespace yet; and past one process: a rig whose cpu tasks are
shared by several worker processes (work.cpu_processes)."""
from __future__ import annotations

import os
import signal

import pytest

from helpers import (free_port, free_ports_in_a_row, model_entry, plan_ended, plan_history, plan_view,
                     start_bundle, submit_plan, temporal_cluster, wait_for, work_section, write_rig)
from llamarig.work import engine

pytestmark = pytest.mark.slow


@pytest.fixture
def two_rigs(tmp_path, models):
    started, ports = [], [free_port(), free_port()]
    try:
        for i, name in enumerate(("a", "b")):
            folder = tmp_path / name
            folder.mkdir()
            # Each names the other as a peer: its workers send their operator key to no other rig.
            work = work_section(concurrency={"cpu": 2, "script": 1}, peers=[f"http://127.0.0.1:{ports[1 - i]}"])
            if started:  # the second rig is a client of the first one's Temporal
                address, namespace = engine.address(started[0].rig)
                work = {**work, "temporal": "cluster", "cluster": {"address": address, "namespace": namespace}}
            rig = write_rig(folder, {"m": model_entry(models["gguf"], [0])}, work=work,
                            api={"host": "127.0.0.1", "port": ports[i]})
            started.append(start_bundle(folder, rig))
            started[-1].wait_ready()
        yield started
    finally:
        for b in started:
            if b.shutdown():
                b.kill()


def _rig_of(worker: str) -> str:
    return worker.split(":")[1]  # work-cpu@host:APIPORT:pid


def test_a_plan_spreads_over_two_rigs_and_survives_a_gpu_worker_killed_mid_task(two_rigs, tmp_path):
    a, b = two_rigs
    release = tmp_path / "release"
    assert "temporal" not in b.ctl("status").stdout  # the second rig runs no engine of its own
    tasks = [{"name": f"c{i}", "class": "cpu", "command": "sleep 0.3; echo $LLAMARIG_TASK > output"}
             for i in range(20)]
    # GPU tasks: a whole GPU each; a first attempt on the second rig hangs until its worker is killed.
    hang_on_b = f'case "$LLAMARIG_ATTEMPT:$LLAMARIG_TASK_OWNER" in 1:*/b/run) [ -f {release} ] || sleep 300;; esac'
    tasks += [{"name": f"g{i}", "class": "script", "command": hang_on_b} for i in range(6)]
    plan_id = submit_plan(a, tasks, name="spread")

    def running_on_b():
        view = plan_view(a, plan_id)["tasks"]
        return next((n for n, t in view.items() if n.startswith("g") and t["state"] == "running"
                     and t.get("worker") and _rig_of(t["worker"]) == str(b.rig.api.port)), None)
    victim = wait_for(running_on_b, 120, "a GPU task running on the second rig's GPU worker")
    os.kill(b.pid("work-gpu"), signal.SIGKILL)
    release.touch()
    view = plan_ended(a, plan_id, timeout=240)
    assert view["outcome"] == "succeeded", {n: t.get("error") for n, t in view["tasks"].items()}
    rigs = {_rig_of(t["result"]["worker"]) for n, t in view["tasks"].items() if n.startswith("c")}
    assert rigs == {str(a.rig.api.port), str(b.rig.api.port)}  # cpu tasks ran on both
    assert view["tasks"][victim]["result"]["attempt"] == 2
    events = plan_history(a.rig, plan_id)
    completed = [e for e in events if e.HasField("activity_task_completed_event_attributes")]
    assert len(completed) == len(tasks)  # nothing completed twice, nothing lost


def test_workers_wait_for_a_namespace_the_cluster_makes_after_they_start(tmp_path, models):
    """As docker-compose.yml starts: Temporal answers before its one-shot has made the namespace.
    The workers wait and say why (they used to fail their validation and exit), the plan routes
    answer 503 naming it, and once it exists plans run."""
    import subprocess

    from llamarig.work.cli_cmds import temporal_bin

    with temporal_cluster(tmp_path) as address:
        work = {**work_section(), "temporal": "cluster", "cluster": {"address": address, "namespace": "later"}}
        b = start_bundle(tmp_path, write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])}, work=work))
        try:
            b.wait_ready()
            logs = {role: b.rig.run_dir / "logs" / f"work-{role}.log" for role in ("cpu", "gpu")}
            said = lambda text: all(p.exists() and text in p.read_text() for p in logs.values())  # noqa: E731
            wait_for(lambda: said("has no namespace 'later' (yet)"), 60, "both workers to say what they wait for")
            refused = b.post("/admin/plans", json={"plan": {"name": "t", "tasks": [{"name": "a", "class": "cpu",
                                                                                    "command": "true"}]}})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "temporal_namespace_missing"
            # Alive past supervisord's startsecs while they wait (not BACKOFF, then FATAL).
            wait_for(lambda: b.ctl("status", "work-cpu", "work-gpu").stdout.count("RUNNING") == 2, 30,
                     "both workers RUNNING")
            subprocess.run([temporal_bin(), "operator", "namespace", "create", "-n", "later", "--address", address],
                           check=True, capture_output=True, timeout=60)
            wait_for(lambda: said("worker polling"), 60, "both workers to poll")
            assert plan_ended(b, submit_plan(b, [{"name": "a", "class": "cpu", "command": "true"}]))["outcome"] \
                == "succeeded"
        finally:
            if b.shutdown():
                b.kill()


def test_cpu_processes_share_the_queue_and_one_killed_leaves_the_others_tasks_alone(tmp_path, models):
    """work.cpu_processes 2: supervisord's group work-cpu of work-cpu-0 and work-cpu-1, each with
    half of concurrency.cpu. Four waiting tasks run on both at once. kill -9 of work-cpu-1: its
    tasks run again elsewhere; its successor's sweep kills only what its own predecessor left, so
    work-cpu-0's tasks end at their first attempt. /metrics/work/cpu is both, labelled."""
    from prometheus_client.parser import text_string_to_metric_families

    release = tmp_path / "release"
    work = work_section(cpu_processes=2, concurrency={"cpu": 4}, metrics_port_cpu=free_ports_in_a_row(2))
    b = start_bundle(tmp_path, write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])}, work=work))
    try:
        b.wait_ready()
        wait_for(lambda: b.ctl("status", "work-cpu:*").stdout.count("RUNNING") == 2, 30, "both cpu processes")
        wait_cmd = f"[ $LLAMARIG_ATTEMPT = 1 ] && while [ ! -f {release} ]; do sleep 0.05; done; echo ok > output"
        plan_id = submit_plan(b, [{"name": f"t{i}", "class": "cpu", "command": wait_cmd} for i in range(4)])

        def all_running():
            view = plan_view(b, plan_id)["tasks"]
            return view if all(t["state"] == "running" and t.get("worker") for t in view.values()) else None
        on = {n: t["worker"].split("@")[0] for n, t in wait_for(all_running, 60, "four tasks running").items()}
        assert sorted(on.values()) == ["work-cpu-0"] * 2 + ["work-cpu-1"] * 2, on  # two slots each
        killed = b.pid("work-cpu:work-cpu-1")
        os.kill(killed, signal.SIGKILL)
        log = b.rig.run_dir / "logs" / "work-cpu-1.log"
        wait_for(lambda: b.pid("work-cpu:work-cpu-1") not in (0, killed) and log.read_text().count("worker polling")
                 == 2, 60, "work-cpu-1 started again and polling (after its sweep)")
        release.touch()
        view = plan_ended(b, plan_id, 120)
        assert view["outcome"] == "succeeded"
        attempts = {n: t["attempt"] for n, t in view["tasks"].items()}
        assert attempts == {n: 1 if p == "work-cpu-0" else 2 for n, p in on.items()}, (attempts, on)

        text = b.get("/metrics/work/cpu").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {s.labels["process"] for f in families.values() for s in f.samples} == {"0", "1"}
        assert [s.value for s in families["llamarig_work_process_up"].samples] == [1, 1]
        b.ctl("stop", "work-cpu:work-cpu-1")  # one down: the scrape still answers, and says which
        r = b.get("/metrics/work/cpu")
        up = next(f for f in text_string_to_metric_families(r.text) if f.name == "llamarig_work_process_up")
        assert r.status_code == 200 and [(s.labels["process"], s.value) for s in up.samples] == [("0", 1), ("1", 0)]
        ended = [s for s in families["llamarig_tasks"].samples if s.name == "llamarig_tasks_total"]
        assert sum(s.value for s in ended if s.labels["outcome"] == "succeeded") == 4, ended
    finally:
        if b.shutdown():
            b.kill()


def test_a_map_spreads_its_items_over_two_rigs_and_a_second_map_reads_each_items_output(two_rigs):
    """Items run on both rigs' workers; the second map's item i
    reads the first map's item i wherever it ran, and the manifest says where each output is."""
    a, b = two_rigs
    tasks = [{"name": "list", "class": "cpu", "command": "seq 1 40 > output"},
             {"name": "tag", "class": "cpu", "depends_on": ["list"], "for_each": {"lines": "@list"},
              "command": "sleep 0.2; echo {item} > output"},
             {"name": "back", "class": "cpu", "depends_on": ["tag"], "for_each": {"items_of": "@tag"},
              "inputs": {"t": "@tag[{index}]"}, "command": 'echo $(( $(cat "$INPUT_T") * 10 )) > output'}]
    view = plan_ended(a, submit_plan(a, tasks, name="maps"), timeout=300)
    assert view["outcome"] == "succeeded", {n: t.get("error") for n, t in view["tasks"].items()}
    import json

    lines = [json.loads(line) for line in open(view["tasks"]["tag"]["result"]["output"])]
    rigs = {_rig_of(line["worker"]) for line in lines}
    assert rigs == {str(a.rig.api.port), str(b.rig.api.port)}, rigs
    assert all(line["output_url"].startswith("http://127.0.0.1:") for line in lines)
    back = [json.loads(line) for line in open(view["tasks"]["back"]["result"]["output"])]
    assert [open(line["output"]).read().strip() for line in back] == [str(10 * i) for i in range(1, 41)]
