"""A task's command: its own process group and working folder, a clean environment, stdout and
stderr to files, heartbeats while it runs, a timeout, and SIGTERM then SIGKILL to the whole
group on cancel (or as soon as `stop_asked()` says so: the plan's cancel marker, seen within
STOP_POLL_S). It never outlives its worker: the kernel kills it when the worker dies
(PR_SET_PDEATHSIG), and a worker's start kills the groups of any process a dead predecessor
left (`sweep`: found by the LLAMARIG_TASK_OWNER every command's environment carries). A process
that left its command's group (setsid, a double fork) is reparented to the worker, a child
subreaper, and killed once its task has ended (work/escapes.py)."""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from llamarig.work import escapes

log = logging.getLogger("llamarig.work")
PR_SET_PDEATHSIG = 1
TERM_GRACE_S = 10  # the default of work.cancel_grace_s
STOP_POLL_S = 0.25  # how often a running command's task looks for its plan's cancel marker
TASK_ID = escapes.TASK_ID
TAIL_CHARS = 200
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


class DefinitionError(Exception):
    """The task cannot run as written (no such program): retrying would not help."""


class StopAsked(Exception):
    """The command was stopped because its plan was cancelled (the marker the API writes)."""


@dataclass
class Finished:
    exit_code: int
    seconds: float
    stderr_tail: str


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# util-linux's setpriv sets the same death signal and execs the command, which lets Python
# spawn with vfork: 1.7 ms a task against 5.5 ms with a preexec_fn (forks the whole worker).
SETPRIV = shutil.which("setpriv")


def argv_of(command: list[str] | str) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _spawn_args(argv: list[str]) -> tuple[list[str], dict]:
    if SETPRIV:
        return [SETPRIV, "--pdeathsig", "KILL", "--", *argv], {}
    return argv, {"preexec_fn": _die_with_parent}


def clean_env(extra: dict[str, str], folder: Path) -> dict[str, str]:
    """Only what a command needs: no keys of the bundle, no inherited secrets."""
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    return env | {"HOME": str(folder), "TMPDIR": str(folder)} | extra


async def run(command: list[str] | str, folder: Path, env: dict[str, str], timeout_s: float,
              beat, beat_every_s: float, grace_s: float = TERM_GRACE_S, stop_asked=None) -> Finished:
    """Run to the end in `folder` (made by the caller); `beat()` every beat_every_s. Cancelled, or
    `stop_asked()` true (StopAsked): the group is stopped first."""
    began = time.monotonic()
    target = argv_of(command)
    if SETPRIV and not _runnable(target[0], env):
        raise _cannot_run(target, "No such file or directory")
    argv, how = _spawn_args(target)
    escapes.spawning(env.get(TASK_ID, ""))
    proc = None
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=folder, env=env, stdin=_devnull(), stdout=out, stderr=err, start_new_session=True, **how)
        except (FileNotFoundError, PermissionError) as e:
            raise _cannot_run(target, e.strerror) from None
        finally:
            escapes.started(proc and proc.pid, env.get(TASK_ID, ""))
    try:
        code = await _wait(proc, timeout_s, beat, beat_every_s, stop_asked)
    finally:
        await stop_group(proc, grace_s)
        if escapes.ended(proc.pid):
            log.warning("killed processes that left the command's group", extra={"task_id": env.get(TASK_ID)})
    return Finished(code, time.monotonic() - began, "" if code == 0 else tail(folder / "stderr"))


def _cannot_run(argv: list[str], why: str) -> DefinitionError:
    return DefinitionError(f"cannot run {shlex.join(argv)[:120]}: {why}")


_DEVNULL: list[int] = []


def _devnull() -> int:
    """One /dev/null for every command's stdin (opening it per task cost a system call each)."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY))
    return _DEVNULL[0]


async def _wait(proc, timeout_s: float, beat, every: float, stop_asked) -> int:
    deadline = time.monotonic() + timeout_s
    next_beat = time.monotonic() + every
    tick = STOP_POLL_S if stop_asked else every
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"ran past its timeout ({timeout_s:g} s)")
        try:
            return await asyncio.wait_for(asyncio.shield(proc.wait()), min(tick, deadline - now, next_beat - now))
        except asyncio.TimeoutError:
            if stop_asked and stop_asked():
                raise StopAsked("the plan was cancelled") from None
            if time.monotonic() >= next_beat:
                beat()
                next_beat = time.monotonic() + every


async def stop_group(proc, grace_s: float) -> None:
    """SIGTERM to the command's group, SIGKILL after grace_s; also takes any of its children
    still running after the leader exited. Runs even when the task is being cancelled."""
    if _signal_group(proc.pid, signal.SIGTERM) and proc.returncode is None:
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), grace_s))
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await asyncio.shield(proc.wait())


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _runnable(program: str, env: dict[str, str]) -> bool:
    """What exec would find: through setpriv, a missing program is only its exit status 127."""
    if "/" in program:
        return os.access(program, os.X_OK)
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None


OWNER = "LLAMARIG_TASK_OWNER"


def sweep(owner: str) -> list[int]:
    """At a worker's start: SIGKILL the process group of every process its dead predecessor left
    (their environment names the same owner)."""
    mine, killed = f"{OWNER}={owner}".encode(), set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if mine not in f.read().split(b"\0"):
                    continue
            group = os.getpgid(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if group not in killed and _signal_group(group, signal.SIGKILL):
            killed.add(group)
    return sorted(killed)


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - chars * 4))
            return f.read().decode(errors="replace")[-chars:]
    except OSError:
        return ""
