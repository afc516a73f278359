"""Processes that leave their command's process group (setsid, a double fork) and so escape the
SIGTERM and SIGKILL sent to it; on a GPU they would keep the memory a lease gave back. The worker
is a child subreaper (PR_SET_CHILD_SUBREAPER): once such a process's parent is gone it becomes
the worker's child. At each task's end, and every REAP_EVERY_S, the worker kills its children
that are no running command and work for no task running here (LLAMARIG_TASK_ID in their
environment), and reaps those that exited.

Why not a cgroup per task: it needs a writable, delegated cgroup v2 tree, which a container or a
plain user seldom has; a subreaper needs no privilege. Not caught: a process that also cleared
its environment, or one that another subreaper below the worker adopted.
"""
from __future__ import annotations

import ctypes
import os
import signal
from collections import Counter

PR_SET_CHILD_SUBREAPER = 36
REAP_EVERY_S = 1.0
TASK_ID = "LLAMARIG_TASK_ID"  # plan/task#attempt, in every command's environment: who a process works for
_RUNNING: dict[int, str] = {}  # a running command's pid -> its task id
_TASKS: Counter = Counter()  # task ids whose command is starting or running
_MARK = f"{TASK_ID}=".encode()
_SPAWNING = [0]  # commands being spawned: their pid is not known yet, so no zombie is reaped meanwhile


def become_subreaper() -> bool:
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


def spawning(task_id: str) -> None:
    _TASKS[task_id] += 1
    _SPAWNING[0] += 1


def started(pid: int | None, task_id: str) -> None:
    """After spawning(), whether the spawn worked (pid) or not (None)."""
    _SPAWNING[0] -= 1
    if pid is None:
        _done(task_id)
    else:
        _RUNNING[pid] = task_id


def ended(pid: int) -> list[int]:
    _done(_RUNNING.pop(pid, ""))
    return reap()


def _done(task_id: str) -> None:
    _TASKS[task_id] -= 1
    if _TASKS[task_id] <= 0:
        del _TASKS[task_id]


def reap() -> list[int]:
    """Kill the children that escaped a task no longer running here; reap those that exited.
    Returns the pids killed."""
    killed = []
    for pid in _children() - set(_RUNNING):
        task_id = _task_id(pid)
        if task_id is None:  # exited (a zombie's environment cannot be read), or not ours
            if not _SPAWNING[0] and _is_zombie(pid):
                _reap(pid)
            continue
        if task_id in _TASKS:
            continue  # its task still runs: a helper its command started on purpose, for now
        _kill(pid)
        killed.append(pid)
    return killed


def _children() -> set[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:  # (an orphan goes to the reaper's first thread)
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


def _task_id(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(_MARK):
                    return entry[len(_MARK):].decode(errors="replace")
    except OSError:
        pass
    return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _kill(pid: int) -> None:
    for send in (lambda: os.killpg(os.getpgid(pid), signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            send()
        except OSError:
            pass
