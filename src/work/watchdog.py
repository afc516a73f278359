"""`llamarig watchdog`: a supervisord event listener (TICK_5) that ends a hung worker. Each worker
process touches run/work/alive-KEY (cpu, cpu-1, gpu: processes.py) from its event loop
(worker.py); one that has not for work.heartbeat_timeout_s (10 s at least; its loop blocked, or
the process stopped) gets SIGKILL through supervisord, which starts it again. The kernel then ends its commands (PR_SET_PDEATHSIG), and
Temporal gives its tasks to a live worker after the same heartbeat timeout: a hung worker
leaves nothing running, as a dead one does."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from llamarig.backend.supervisor import SupervisorClient, SupervisorError
from llamarig.backend.supervisor_conf import socket_path
from llamarig.work.processes import of_rig

log = logging.getLogger("llamarig.work")
SILENCE_FLOOR_S = 10  # never less: a loaded 2-core host delays a busy loop's touch by seconds
STARTUP_S = 60  # a worker that has not said anything since its start: imports, sandbox checks


def alive_path(rig, key: str) -> Path:
    return rig.run_dir / "work" / f"alive-{key}"


def say_alive(path: Path) -> None:
    path.touch()


def silent_for(rig, key: str, info: dict, now: float) -> float | None:
    """Seconds the RUNNING worker has not said it is alive, where that passed heartbeat_timeout_s
    (SILENCE_FLOOR_S at least), or STARTUP_S for one that has said nothing since it started; else None."""
    if info.get("statename") != "RUNNING":
        return None
    try:
        said = os.stat(alive_path(rig, key)).st_mtime
    except OSError:
        said = 0.0
    started = float(info["start"])
    if said < started:
        return now - started if now - started > max(STARTUP_S, rig.work.heartbeat_timeout_s) else None
    return now - said if now - said > max(SILENCE_FLOOR_S, rig.work.heartbeat_timeout_s) else None


def check(rig, supervisor: SupervisorClient) -> list[str]:
    """Kill every hung worker; the programs killed."""
    killed = []
    for proc in of_rig(rig):
        program = proc.namespec
        try:
            silent = silent_for(rig, proc.key, supervisor.info(program), time.time())
            if silent is None:
                continue
            supervisor.signal(program, "KILL")
        except SupervisorError as e:
            log.warning("watchdog could not check or kill a worker", extra={"program": program, "reason": e.reason})
            continue
        log.warning("killed a hung worker", extra={"program": program, "silent_s": round(silent, 1),
                                                   "heartbeat_timeout_s": rig.work.heartbeat_timeout_s})
        killed.append(program)
    return killed


def serve(rig, stdin=sys.stdin, stdout=sys.stdout) -> int:
    """supervisord's event listener protocol: READY, one event (header, then its payload), RESULT."""
    supervisor = SupervisorClient(socket_path(rig))
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        header = dict(field.split(":", 1) for field in line.split())
        stdin.read(int(header["len"]))
        if header.get("eventname", "").startswith("TICK"):
            check(rig, supervisor)
        stdout.write("RESULT 2\nOK")
        stdout.flush()
