"""The work layer's commands: the supervisord programs (`temporal`, `work gpu|cpu`) and the
operator's (`submit`, `retry`, `plans`, `plan`, `cancel`), which go through the compute API's
/admin/plans with the operator key, as every operator command does."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from llamarig.shared.errors import LlamarigError


def temporal_bin() -> str | None:
    """The pinned CLI of the 'embedded' extra: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    return str(beside) if beside.exists() else shutil.which("temporal")


def need_work(rig) -> None:
    if rig.work is None:
        raise LlamarigError("work_off", f"{rig.source} has no work section: add `work: {{temporal: embedded}}` "
                            "to run plans")


def check_embedded(rig) -> None:
    """Nothing starts with work.temporal: embedded and no temporal CLI installed."""
    if rig.work and rig.work.temporal == "embedded" and temporal_bin() is None:
        raise LlamarigError("temporal_missing", "work.temporal is 'embedded' but the temporal CLI is not "
                            "installed: pip install 'llamarig[embedded]', or set work.temporal: cluster")


def run_temporal(rig) -> int:
    from llamarig.work import namespace
    from llamarig.work.engine import embedded_command

    need_work(rig)
    check_embedded(rig)
    db = rig.run_dir / "temporal.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    cmd = embedded_command(rig.work, temporal_bin(), str(db), namespace.of_rig(rig))
    os.execv(cmd[0], cmd)


def run_worker(rig, role: str, index: int | None = None) -> int:
    import asyncio

    from llamarig.shared.logs import setup_logging
    from llamarig.work.processes import WorkerProcess, of_rig
    from llamarig.work.worker import serve

    need_work(rig)
    proc = WorkerProcess(role, index)
    if proc not in of_rig(rig):
        raise LlamarigError("no_such_worker", f"{rig.source} runs no {proc.name} (work.cpu_processes: "
                            f"{rig.work.cpu_processes}; --index only for cpu, 0 to cpu_processes - 1, above 1)")
    setup_logging()
    return asyncio.run(serve(rig, proc))


def run_watchdog(rig) -> int:
    from llamarig.shared.logs import setup_logging
    from llamarig.work import watchdog

    need_work(rig)
    setup_logging()
    return watchdog.serve(rig)


def submit(rig, path: str, infer_class: bool, reusing: str | None = None, wait: bool = False) -> int:
    from llamarig.ops import Api
    from llamarig.work.plan import load_plan

    need_work(rig)
    plan = load_plan(path, infer_class, set(rig.models), rig.work.external is not None,
                     rig.work.retries)  # refused here before anything is sent
    sent = {"plan": plan.model_dump(by_alias=True)} | ({"reuse": reusing} if reusing else {})
    return _submitted(rig, Api(rig).post_json("/admin/plans", sent), reusing, wait)


def retry(rig, plan_id: str, wait: bool = False) -> int:
    from llamarig.ops import Api

    need_work(rig)
    return _submitted(rig, Api(rig).post(f"/admin/plans/{plan_id}/retry"), plan_id, wait)


def _submitted(rig, body: dict, reusing: str | None, wait: bool) -> int:
    reused = f"; {len(body['reused'])} reused from {reusing}: {', '.join(body['reused'])}" if body["reused"] else ""
    gone = body.get("outputs_gone") or []
    again = f"; {len(gone)} run again, an output they need being gone: {', '.join(gone)}" if gone else ""
    mapped = "".join(f"; {name}: {n} items" if isinstance(n, int) else f"; {name}: {n}"
                     for name, n in (body.get("items") or {}).items())
    line = f"submitted {body['plan_id']} ({body['tasks']} tasks{reused}{again}{mapped})"
    if wait:
        return _waiting(rig, body["plan_id"], False, lambda: print(line, flush=True))
    print(line)
    return 0


def plans(rig, as_json: bool) -> int:
    from llamarig.ops import Api

    rows = Api(rig).get("/admin/plans")["plans"]
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        started = time.strftime("%m-%d %H:%M:%S", time.gmtime(r["started_at"])) if r.get("started_at") else "-"
        reason = f"  {r['reason'][:100]}" if r.get("reason") else ""
        print(f"{r['plan_id'][:52]:52} {r['status'][:12]:12} {started}{reason}")
    return 0


def show(rig, plan_id: str, as_json: bool, wait: bool = False) -> int:
    from llamarig.ops import Api

    if wait:
        return _waiting(rig, plan_id, as_json)
    _print(Api(rig).get(f"/admin/plans/{plan_id}"), as_json)
    return 0


def _waiting(rig, plan_id: str, as_json: bool, first=None) -> int:
    """Until the plan ends, then its view: exit 0 if it succeeded, else 1; 130 when interrupted
    (from `first()` on: the plan goes on)."""
    try:
        if first:
            first()
        from llamarig.ops import Api
        from llamarig.work.plans import running

        api = Api(rig)
        body = api.get(f"/admin/plans/{plan_id}")
        while running(body):
            time.sleep(1)
            body = api.get(f"/admin/plans/{plan_id}")
    except KeyboardInterrupt:
        print(f"stopped waiting; {plan_id} goes on (llamarig plan {plan_id})", file=sys.stderr)
        return 130
    _print(body, as_json)
    return int(body["outcome"] != "succeeded")


def _print(body: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(body, indent=1))
    else:
        _print_view(body)


def _print_view(body: dict) -> None:
    print(f"{body['plan_id']}  {body.get('outcome')}")
    if body.get("ended_by_engine"):  # (terminated, timed out: the workflow never ended it)
        print(f"  ended by the engine, {body['ended_by_engine']['status']}: {body['ended_by_engine']['reason']}")
    if body.get("external"):
        x = body["external"]
        print(f"  escalation tier: {x['calls']} calls, {x['tokens_in']} tokens in, {x['tokens_out']} out, "
              f"{x['cost']:.4f} {x['currency']}")
    print(f"  {'task':18} {'state':10} {'try':>3} {'rig':21} {'worker':8} {'gpu':3} {'time':>7}")
    for name, t in body["tasks"].items():
        r = t.get("result") or {}
        took = f"{r['duration_ms'] / 1000:.1f}s" if r.get("duration_ms") is not None else "-"
        worker, _, rig = (r.get("worker") or t.get("worker") or "-").partition("@")
        gpu = "-" if r.get("gpu") is None else str(r["gpu"])
        attempt = r.get("attempt") or t.get("attempt") or "-"
        rig = rig.rsplit(":", 1)[0] or "-"  # host:apiport (the pid dropped)
        state = "reused" if t.get("reused_from") else t["state"]  # (succeeded in an earlier plan)
        print(f"  {name[:18]:18} {state[:10]:10} {attempt!s:>3} {rig[:21]:21} {worker[5:][:8]:8} {gpu[:3]:3} "
              f"{took:>7}")
        if t.get("map"):
            _print_map(t["map"])
        error = t.get("error") or t.get("last_error")
        if error:
            print(f"    {error[-150:]}")


def _print_map(m: dict) -> None:
    """A for_each task's group: its items by state, its slices, the failed items kept."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(m["states"].items())) or "none ended"
    print(f"    {m['items']} items: {states}; slices {m['slices_done']}/{m['slices']}; "
          f"max_failed allows {m['allowed_failures']}")
    for f in m.get("failed_items", []):
        print(f"    item {f['index']} ({f['item'][:60]}): {f['error'][-100:]}")


def show_items(rig, plan_id: str, task: str, as_json: bool) -> int:
    from llamarig.ops import Api

    body = Api(rig).get(f"/admin/plans/{plan_id}/items/{task}")
    if as_json:
        print(json.dumps(body, indent=1))
        return 0
    for r in body["items"]:
        where = r.get("output") or r.get("error", "")
        print(f"{r['index']:>6} {r['state'][:10]:10} {str(r.get('item', ''))[:50]:50} {where[-120:]}")
    if body.get("running"):
        print("(running: the items of the slices started so far)")
    return 0


def cancel(rig, plan_id: str) -> int:
    from llamarig.ops import Api

    Api(rig).post(f"/admin/plans/{plan_id}/cancel")
    print(f"cancel requested: {plan_id} (commands get SIGTERM, then SIGKILL)")
    return 0


def backup(rig, dest: str) -> int:
    from llamarig.work import backup as b

    print(f"wrote {b.backup(rig, Path(dest))}")
    return 0


def prune_plans(rig, days: float, dry_run: bool, as_json: bool) -> int:
    """Only Temporal knows which plans still run or reuse outputs here (on any rig): without an
    answer from it, nothing is pruned (exit 1)."""
    import asyncio

    from llamarig.work import engine
    from llamarig.work.prune import prune

    async def run():
        client = await engine.connect(rig, identity="llamarig prune-plans")
        return await prune(rig.run_dir, days, client, dry_run)
    need_work(rig)
    try:
        done = asyncio.run(run())
    except engine.WorkError as e:
        print(f"{e.code}: {e.reason}: nothing pruned", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(done, indent=1))
        return 0
    verb = "would remove" if dry_run else "removed"
    for plan_id in done["removed"]:
        print(f"{verb} {plan_id}")
    print(f"{verb} {len(done['removed'])} plans ({done['bytes_freed'] / 2**20:.1f} MiB); kept "
          f"{done['kept_younger']} younger than {days:g} days, {len(done['kept_running'])} still running and "
          f"{len(done['kept_reused'])} whose outputs a running plan reuses")
    return 0


def restore(rig, source: str) -> int:
    from llamarig.work import backup as b

    for path in b.restore(rig, Path(source)):
        print(f"restored {path}")
    return 0
