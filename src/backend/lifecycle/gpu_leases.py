"""Whole GPUs lent to script commands (a plan's `script` task with a command): the planner
switches a worker GPU to script mode for the lease's holder, as it does for Whisper, and gives
it back to its LLMs when the lease is returned or expires (its worker stopped renewing: dead
or hung). A leased GPU is never placed on, switched or reclaimed by waiting LLM requests:
the task holds it for its duration, bounded by its own timeout.

Renewing only moves the lease's deadline (one synchronous write, in the loop the planner runs
in); the expiry the timer posts carries its condition, "still past its deadline", and the
planner checks it when it handles it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

from llamarig.backend.lifecycle import switch
from llamarig.backend.lifecycle.actor import NotAvailable
from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.states import ENDED, LOADING

log = logging.getLogger("llamarig.gpu_leases")


@dataclass
class GpuLease:
    id: str
    holder: str
    gpu: int
    ttl_s: float
    expires_at: float
    granted_at: float = field(default_factory=time.time)  # Unix time (the thermal model test reads it)

    def as_dict(self) -> dict:
        return {"lease_id": self.id, "holder": self.holder, "gpu": self.gpu, "ttl_s": self.ttl_s,
                "expires_in_s": round(self.expires_at - time.monotonic(), 3)}


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@dataclass
class TakeGpu:
    holder: str
    ttl_s: float
    reply: asyncio.Future = field(default_factory=_future)


@dataclass
class ReturnGpu:
    lease_id: str
    reason: str
    reply: asyncio.Future = field(default_factory=_future)


@dataclass
class LeaseExpired:
    lease_id: str


def _candidates(p) -> list[int]:
    """GPUs that may be lent: present in the inventory, every LLM on them switchable and none
    loading, no script service on them, not lent already, not hot (thermal.py); GPUs without an
    LLM first, then those whose LLMs are idle, the cooler first."""
    scored, pinned, present = [], _pinned(p), set(p.free_bytes())
    for gpu in sorted(p.modes.gpus):
        llms = switch.llms_on(p, gpu)
        if gpu not in present or gpu in p.leases or gpu in pinned or p.modes.mode(gpu) not in (Mode.LLM, Mode.IDLE) \
                or gpu in p.memory.reserved_gpus() or p.thermal.hot(gpu):
            continue
        if not all(a.unit.switchable for a in llms) or any(a.state in LOADING for a in llms):
            continue
        scored.append((bool(llms), any(a.inflight or a.waiters for a in llms), p.thermal.warmth(gpu), gpu))
    return [gpu for *_, gpu in sorted(scored)]


def _pinned(p) -> set[int]:
    """GPUs some unit other than an LLM is pinned to (Whisper on whisper.gpu, a placement running)."""
    return {g for a in p.all_actors() if not a.unit.is_llm and a.state not in ENDED for g in a.unit.gpus}


async def take(p, c: TakeGpu) -> None:
    choices = _candidates(p)
    if not choices:
        hot = sorted(g for g in p.modes.gpus if p.thermal.hot(g))
        warm = f", or is at or past thermal.target_c (GPUs {', '.join(map(str, hot))})" if hot else ""
        c.reply.set_exception(NotAvailable("no_gpu_to_lend", "no GPU can be lent now: each holds an LLM that is "
                                           f"not switchable or is loading, a script service, or another lease{warm}", 5))
        return
    gpu = choices[0]
    need = {gpu: sum(p.memory.need(a.unit).get(gpu, 0) for a in switch.llms_on(p, gpu))}
    if not await switch.clear_gpu(p, gpu, c.holder, f"lent to {c.holder}", need):
        c.reply.set_exception(NotAvailable("gpu_memory_held", f"GPU {gpu} did not free its memory in time", 10))
        return
    if p.thermal.hot(gpu):  # (it got hot while its LLMs stopped: planned under "not hot", refused)
        await switch.back_to_llm(p, gpu, f"GPU {gpu} got hot before it could be lent to {c.holder}")
        c.reply.set_exception(NotAvailable("gpu_hot", f"GPU {gpu} passed thermal.target_c while it was cleared "
                                           "for the lease", 10))
        return
    lease = GpuLease(secrets.token_hex(8), c.holder, gpu, c.ttl_s, time.monotonic() + c.ttl_s)
    p.leases[gpu] = lease
    save(p)
    p.modes.set(gpu, Mode.SCRIPT, c.holder, f"lent to {c.holder} (lease {lease.id})")
    _expire_later(p, lease)
    c.reply.set_result(lease.as_dict())


def renew(p, lease_id: str) -> dict | None:
    lease = _find(p, lease_id)
    if lease is None:
        return None
    lease.expires_at = time.monotonic() + lease.ttl_s
    return lease.as_dict()


async def give_back(p, c: ReturnGpu) -> None:
    lease = _find(p, c.lease_id)
    if lease is None:
        c.reply.set_result(False)
        return
    del p.leases[lease.gpu]
    save(p)
    await switch.back_to_llm(p, lease.gpu, f"{lease.holder} {c.reason}")
    c.reply.set_result(True)


async def expired(p, c: LeaseExpired) -> None:
    lease = _find(p, c.lease_id)
    if lease is None:
        return
    if time.monotonic() < lease.expires_at:  # renewed since the timer was set
        _expire_later(p, lease)
        return
    del p.leases[lease.gpu]
    save(p)
    await switch.back_to_llm(p, lease.gpu, f"{lease.holder} stopped renewing its lease for {lease.ttl_s:g} s")


def _expire_later(p, lease: GpuLease) -> None:
    delay = max(0.0, lease.expires_at - time.monotonic())
    asyncio.get_running_loop().call_later(delay, p.post, LeaseExpired(lease.id))


def _find(p, lease_id: str) -> GpuLease | None:
    return next((lease for lease in p.leases.values() if lease.id == lease_id), None)


# ---- kept across a compute API restart: the command on the GPU does not know the API restarted --
def _path(p):
    return p.rig.run_dir / "gpu-leases.json"


def save(p) -> None:
    rows = [{"id": l.id, "holder": l.holder, "gpu": l.gpu, "ttl_s": l.ttl_s, "llms": p.switched.get(l.gpu, [])}
            for l in p.leases.values()]
    tmp = _path(p).with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(_path(p))


def adopt(p) -> None:
    """At boot, before the waves: a GPU lent when the API stopped stays lent, its LLMs stopped,
    for one more ttl_s (its worker renews it, or it expires and the GPU comes back)."""
    try:
        rows = json.loads(_path(p).read_text())
    except (OSError, ValueError):
        return
    for row in rows:
        gpu = row["gpu"]
        if gpu not in p.modes.gpus:
            continue
        lease = GpuLease(row["id"], row["holder"], gpu, row["ttl_s"], time.monotonic() + row["ttl_s"])
        p.leases[gpu], p.switched[gpu] = lease, row["llms"]
        p.modes.set(gpu, Mode.TO_SCRIPT, lease.holder, "a lease found at the compute API's start")
        p.modes.set(gpu, Mode.SCRIPT, lease.holder, f"lent to {lease.holder} (lease {lease.id}), adopted")
        _expire_later(p, lease)
        log.info("lease adopted", extra={"gpu": gpu, "holder": lease.holder})
