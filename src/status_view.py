"""`llamarig status` as a person reads it: one line per unit, per GPU and per work queue,
fitting 80 columns; the reason cut to fit (whole with --wide). Plain text, so it reads the same
through a pipe, `docker exec` without a terminal, or a narrow window."""
from __future__ import annotations

WIDTH = 80
GIB = 1024 ** 3
UNIT_COLUMNS = "{name:<14} {state:<9} {gpus:<5} {inflight:>4} {restarts:>3} {load:>6}  {reason}"
GPU_COLUMNS = "{index:<4} {mode:<10} {memory:<19} {units}"


def _cut(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(0, room - 1)] + "…"


def _unit_line(u: dict, wide: bool) -> str:
    load = f"{u['load_seconds']:.1f}s" if u["load_seconds"] else "-"
    state = u["state"] + ("!" if u["circuit_open"] else "")
    line = UNIT_COLUMNS.format(name=_cut(u["name"], 14), state=state, gpus=",".join(map(str, u["gpus"])),
                               inflight=u["inflight"], restarts=u["restarts_in_window"], load=load, reason="")
    return line + (u["reason"] if wide else _cut(u["reason"], WIDTH - len(line)))


def _gpu_line(g: dict, wide: bool) -> str:
    memory = f"{g['used_bytes'] / GIB:.1f}/{g['total_bytes'] / GIB:.1f} GiB used"
    line = GPU_COLUMNS.format(index=g["index"], mode=g.get("mode", "-"), memory=memory, units="")
    units = ", ".join(g["units"]) or "-"
    if g.get("thermal", "ok") != "ok":  # (hot: no new script work there; slowdown: script work moved off)
        units = f"[{g['thermal']} {g.get('temperature_c', 0):g} C] {units}"
    return line + (units if wide else _cut(units, WIDTH - len(line)))


def render(body: dict, wide: bool = False) -> str:
    """The /admin/units body as text: units, then GPUs. `!` after a state: the circuit is open."""
    header = UNIT_COLUMNS.format(name="UNIT", state="STATE", gpus="GPUS", inflight="REQ", restarts="RST",
                                 load="LOAD", reason="REASON")
    lines = [header] + [_unit_line(u, wide) for u in body["units"]]
    if body.get("gpus"):
        lines += ["", GPU_COLUMNS.format(index="GPU", mode="MODE", memory="MEMORY", units="UNITS") +
                  (" (simulated)" if body.get("gpus_simulated") else "")]
        lines += [_gpu_line(g, wide) for g in body["gpus"]]
    return "\n".join(lines)


def render_work(work: dict, wide: bool = False) -> str:
    """GET /admin/work as text: the engine, then each queue with who polls it (or its error)."""
    if "error" in work:
        return f"work: {work['error']['code']}: {work['error']['message']}"
    t = work["temporal"]
    lines = [f"work: Temporal at {t['address']}, namespace {t['namespace']}"]
    for queue, q in work["queues"].items():
        pollers = ", ".join(f"{p['identity']} ({p['seen_s_ago']:g} s ago)" for p in q["pollers"]) or "NO POLLER"
        line = f"  {queue:<14} "
        lines.append(line + (pollers if wide else _cut(pollers, WIDTH - len(line))))
    return "\n".join(lines)
