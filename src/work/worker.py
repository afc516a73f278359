"""The worker programs: `llamarig work gpu` polls QUEUE@gpu (script and llm tasks, taken only
when the rig can run them: slots.py); `llamarig work cpu` polls QUEUE@cpu (cpu tasks, and the
plan workflows themselves, so a cpu task runs eagerly on the worker that scheduled it).
SIGTERM: stop polling, give running tasks graceful_s, then cancel them (their commands get
SIGTERM, then SIGKILL)."""
from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta

from llamarig.shared.keys import load_keys
from llamarig.shared.tls import api_url, loopback_trust, peer_trust
from llamarig.work import commands, engine, escapes, outputs, watchdog
from llamarig.work.activities import Activities, task_owner
from llamarig.work.api_client import ComputeApi
from llamarig.work.processes import WorkerProcess, cpu_slots
from llamarig.work.slots import RigSlots

log = logging.getLogger("llamarig.work")
GRACEFUL_S = 10  # running tasks get this long to end after SIGTERM before they are cancelled
STICKY_S = 2  # a plan whose cpu worker died moves to another after this (the SDK's default: 10 s)
CONNECT_RETRY_MAX_S = 10  # the longest wait between two tries to reach Temporal
PRUNE_EVERY_S = 6 * 3600  # work.keep_plans_days: how often work-cpu looks for old plans
SWEEP_EVERY_S = 10  # how often work-cpu looks for plans the engine closed (work/engine_end.py)
ALIVE_EVERY_S = 5  # how often a worker tells the watchdog it is alive (or a quarter of the heartbeat timeout)


def _runtime(port: int):
    if not port:
        return None
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    buckets = {"llamarig_task_seconds": [1, 5, 15, 60, 300, 900, 1800, 3600, 7200],
               "llamarig_task_held_seconds": [1, 10, 60, 300, 900, 1800, 3600]}  # 900: the backlog alert's bound
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}",
                                                                      histogram_bucket_overrides=buckets)))


async def _connect(rig, identity: str, runtime):
    """Wait for Temporal as long as it takes (it may start beside us, or the cluster be down):
    the worker stays up, saying so every try; the TemporalUnreachable alert covers the wait."""
    wait = 1.0
    while True:
        try:
            return await engine.connect(rig, identity, runtime)
        except engine.WorkError as e:
            log.warning("waiting for Temporal", extra={"reason": e.reason, "retry_in_s": wait})
            await asyncio.sleep(wait)
            wait = min(wait * 2, CONNECT_RETRY_MAX_S)


def _api(rig) -> ComputeApi:
    keys = load_keys(rig)
    key = (keys.client[0] if keys.client else keys.operator)
    return ComputeApi(api_url(rig), key.decode() if key else None,
                      timeout_s=rig.work.task_timeout_s,
                      operator_key=keys.operator.decode() if keys.operator else None,
                      key_origins=outputs.key_origins(rig), verify=loopback_trust(rig), peer_verify=peer_trust(rig))


async def serve(rig, proc: WorkerProcess) -> int:
    role, w = proc.role, rig.work
    identity = engine.worker_identity(proc.name, rig.api.port)
    alive = asyncio.ensure_future(_say_alive(watchdog.alive_path(rig, proc.key), w.heartbeat_timeout_s))
    _watch_children_by_pidfd()
    if not escapes.become_subreaper():
        log.warning("not a child subreaper: a command's process that leaves its group outlives its task")
    reaping = asyncio.ensure_future(_reap_every())
    swept = commands.sweep(task_owner(rig, proc.key))
    if swept:
        log.warning("killed the process groups a dead worker left", extra={"groups": swept})
    runtime = _runtime(w.metrics_port_of(role, proc.index))
    client = await _connect(rig, identity, runtime)
    first_cpu = role == "cpu" and not proc.index  # (once a rig: the retention, the prune)
    if first_cpu and w.temporal == "embedded":
        await engine.ensure_retention(client, w)
    pruning = asyncio.ensure_future(_prune_every(rig, client)) if first_cpu and w.keep_plans_days else None
    meter = runtime.metric_meter if runtime else None
    sweeping = asyncio.ensure_future(_sweep_every(rig, client, meter)) if first_cpu else None
    api = _api(rig)
    acts = Activities(rig, proc, identity, api, meter)
    queue = engine.queues(w)[role]
    if role == "cpu":
        worker = _cpu_worker(client, queue, acts, identity, cpu_slots(w, proc.index))
    else:
        worker = _gpu_worker(rig, client, queue, acts, identity)
    _stop_on_term(worker)
    log.info("worker polling", extra={"queue": queue, "identity": identity})
    await worker.run()
    for task in (alive, reaping, pruning, sweeping):
        if task:
            task.cancel()
    await api.close()
    log.info("worker stopped", extra={"queue": queue})
    return 0


def _cpu_worker(client, queue: str, acts: Activities, identity: str, slots: int):
    """Plans and cpu tasks, `slots` at once (this process's share of concurrency.cpu)."""
    from temporalio.worker import Worker

    from llamarig.work.map_files import MapFiles
    from llamarig.work.map_workflow import MapSliceWorkflow
    from llamarig.work.workflow import PlanWorkflow

    files = MapFiles(acts.store, acts.api.fetch_output, acts.served_from)
    return Worker(client, task_queue=queue, workflows=[PlanWorkflow, MapSliceWorkflow],
                  activities=[acts.run_cpu, acts.run_external, acts.record_plan, files.map_items, files.read_items,
                              files.write_slice, files.join_manifest],
                  max_concurrent_activities=slots, identity=identity,
                  sticky_queue_schedule_to_start_timeout=timedelta(seconds=STICKY_S),
                  graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_S))


def _gpu_worker(rig, client, queue: str, acts: Activities, identity: str):
    """Script and llm tasks, taken only while the rig can run them (slots.py)."""
    from temporalio.worker import FixedSizeSlotSupplier, Worker, WorkerTuner

    slots = RigSlots(rig, acts.api)
    slots.start()
    fixed = FixedSizeSlotSupplier(100)
    tuner = WorkerTuner.create_composite(workflow_supplier=fixed, activity_supplier=slots,
                                         local_activity_supplier=fixed, nexus_supplier=fixed)
    return Worker(client, task_queue=queue, activities=[acts.run_script, acts.run_llm], tuner=tuner,
                  identity=identity, graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_S))


async def _prune_every(rig, client) -> None:
    """work.keep_plans_days: old plans' files leave the run folder (work/prune.py)."""
    from llamarig.work.prune import prune

    while True:
        try:
            done = await prune(rig.run_dir, rig.work.keep_plans_days, client)
            log.info("old plans pruned", extra={"event_type": "plans_pruned", "removed": len(done["removed"]),
                                                "bytes_freed": done["bytes_freed"],
                                                "kept_running": len(done["kept_running"])})
        except Exception as e:  # (tried again in PRUNE_EVERY_S)
            log.warning("could not prune old plans", extra={"event_type": "plans_unpruned", "reason": str(e)})
        await asyncio.sleep(PRUNE_EVERY_S)


async def _sweep_every(rig, client, meter) -> None:
    """Plans the engine closed, not their workflow (work/engine_end.py): settled as work-cpu meets
    them, and each closed since it started counted once in llamarig_plans_ended_by_engine_total
    (the LlamarigPlanTerminated alert), with a log line giving the engine's reason."""
    from llamarig.work import engine_end, plans

    counter = meter.create_counter("llamarig_plans_ended_by_engine_total", "Plans of this rig closed by the engine "
                                   "(terminated, timed out, failed), by status") if meter else None
    for status in engine_end.ENGINE_CLOSED if counter else ():
        counter.add(0, {"status": status})  # (a series that starts at 1 shows no increase)
    seen: set[str] | None = None
    while True:
        try:
            closed = await engine_end.closed_by_engine(client, rig)
            for plan_id, (status, view) in closed.items():
                if plan_id in (seen or ()):
                    continue
                if not view.get("ended_by_engine"):  # (a view of it may have settled it already)
                    view = await plans.settle_closed(client, rig, plan_id, status)
                if seen is not None:  # (closed before this process started: settled, counted then)
                    if counter:
                        counter.add(1, {"status": status})
                    log.warning("plan ended by the engine", extra={"event_type": "plan_ended_by_engine",
                                                                   "plan_id": plan_id, **view["ended_by_engine"]})
            seen = (seen or set()) | set(closed)
        except Exception as e:  # (tried again in SWEEP_EVERY_S)
            log.warning("could not look for plans the engine closed", extra={"reason": str(e)})
        await asyncio.sleep(SWEEP_EVERY_S)


async def _reap_every() -> None:
    """Processes that escaped their command's group, once their task ended (work/escapes.py)."""
    while True:
        killed = escapes.reap()
        if killed:
            log.warning("killed processes that outlived their task", extra={"pids": killed})
        await asyncio.sleep(escapes.REAP_EVERY_S)


async def _say_alive(path, heartbeat_timeout_s: float) -> None:
    """For the watchdog (work/watchdog.py): from the event loop, so a blocked loop falls silent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        watchdog.say_alive(path)
        await asyncio.sleep(min(ALIVE_EVERY_S, heartbeat_timeout_s / 4))


def _watch_children_by_pidfd() -> None:
    """Python 3.11 starts a thread per subprocess to wait for it; a pidfd in the event loop does
    it without one (0.4 ms of CPU a task, measured in bench/work.py's fan-out)."""
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


def _stop_on_term(worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(worker.shutdown()))
