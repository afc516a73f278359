"""Render supervisord.conf from the rig: one program per model, Whisper and the compute API.

Paths inside the folder the file is written to become `%(here)s/...`, so the checked-in render
of the default rig works from any checkout. Model programs do not autostart: the lifecycle
manager in the compute API decides when each one starts.
"""
from __future__ import annotations

import math
from pathlib import Path

from llamarig.backend.gate import plan_path
from llamarig.shared.keys import key_variables
from llamarig.shared.rig import Rig

API_PROGRAM = "compute-api"
WHISPER_PROGRAM = "whisper"
TEMPORAL_PROGRAM = "temporal"
WATCHDOG_PROGRAM = "work-watchdog"
HEADER = "; Rendered by `llamarig render` from {rig}. Edit the rig and render again; do not edit by hand.\n"


BLUE, GREEN = "blue", "green"  # a model's two server slots; green exists only with swap_port


def model_program(name: str, slot: str = BLUE) -> str:
    # "_" cannot appear in a model name, so the green program never collides with a model's.
    return f"llama-{name}" if slot == BLUE else f"llama-{name}_{slot}"


def placement_slot(gpu: int) -> str:
    return f"gpu{gpu}"


def placement_program(gpu: int, base: str = WHISPER_PROGRAM) -> str:
    """The program of a service placed on `gpu`: Whisper (whisper.gpus), or an embeddings model's
    (its placements) with base llama-NAME."""
    return f"{base}@{gpu}"


def verdict_key(unit: str, slot: str = BLUE) -> str:
    """Name of a slot's verdict and plan files: a green start must not read blue's."""
    return unit if slot == BLUE else f"{unit}_{slot}"


def _here(path: Path, conf_dir: Path | None) -> str:
    """`path` as the conf spells it; conf_dir None: every path absolute (a conf read through a
    link elsewhere, as the image's /app/supervisord.conf, must not depend on its folder)."""
    path = path.resolve()
    if conf_dir is None:
        return str(path)
    try:
        rel = str(path.relative_to(conf_dir.resolve()))
    except ValueError:
        return str(path)
    return "%(here)s" if rel == "." else f"%(here)s/{rel}"


def _section(title: str, items: dict[str, object]) -> str:
    return f"[{title}]\n" + "".join(f"{k}={v}\n" for k, v in items.items()) + "\n"


def _env(values: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in values.items())


def gate_startsecs(rig: Rig) -> int:
    """A refused model must end FATAL, not EXITED: supervisord only says FATAL for an exit
    within startsecs, so startsecs covers the launch gate's whole wait."""
    return math.ceil(rig.timeouts.model_wait_s + rig.timeouts.settle_s) + 2


def _program(rig: Rig, conf_dir: Path | None, name: str, command: str, extra: dict) -> str:
    logs = rig.run_dir / "logs"
    items = {
        "command": command, "directory": _here(rig.root, conf_dir),
        "stdout_logfile": _here(logs / f"{name}.log", conf_dir), "redirect_stderr": "true",
        "stdout_logfile_maxbytes": "10MB", "stdout_logfile_backups": 3,
        "stopasgroup": "true", "killasgroup": "true", "stopsignal": "TERM",
    }
    items.update(extra)
    return _section(f"program:{name}", items)


def _gated(rig: Rig, conf_dir: Path | None, rig_ref: str, unit: str, program: str, gpus: list[int], priority: int,
           slot: str = BLUE) -> str:
    plan = _here(plan_path(rig.run_dir, verdict_key(unit, slot)), conf_dir)
    launch = f"llamarig --rig {rig_ref} launch {unit}" + (f" --slot {slot}" if slot != BLUE else "") + f" --plan {plan}"
    env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "LLAMARIG_PROGRAM": program, "PYTHONUNBUFFERED": "1"}
    env.update({name: "" for name in key_variables(rig)})  # the keys are the API's alone
    return _program(rig, conf_dir, program, launch, {
        "autostart": "false", "autorestart": "false", "startretries": 0,
        "startsecs": gate_startsecs(rig), "stopwaitsecs": math.ceil(rig.timeouts.stop_s),
        "priority": priority, "environment": _env(env)})


def render(rig: Rig, conf_dir: Path | None) -> str:
    run, rig_ref = rig.run_dir, _here(Path(rig.source), conf_dir)
    sock = _here(run / "supervisor.sock", conf_dir)
    parts = [HEADER.format(rig=_here(Path(rig.source), conf_dir).replace("%(here)s/", "")),
             _section("unix_http_server", {"file": sock, "chmod": "0700"}),
             _section("supervisord", {
                 "nodaemon": "true", "logfile": _here(run / "logs" / "supervisord.log", conf_dir),
                 "pidfile": _here(run / "supervisord.pid", conf_dir),
                 "childlogdir": _here(run / "logs", conf_dir), "logfile_maxbytes": "10MB",
                 "logfile_backups": 3, "loglevel": "info"}),
             _section("rpcinterface:supervisor",
                      {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}),
             _section("supervisorctl", {"serverurl": "unix://" + sock})]
    for name, model in sorted(rig.models.items(), key=lambda kv: (kv[1].priority, kv[0])):
        if model.placements:
            parts += [_gated(rig, conf_dir, rig_ref, name, placement_program(g, model_program(name)), [g],
                             100 + model.priority, placement_slot(g)) for g in model.placements]
            continue
        parts.append(_gated(rig, conf_dir, rig_ref, name, model_program(name), model.gpus, 100 + model.priority))
        if model.swap_port is not None:
            parts.append(_gated(rig, conf_dir, rig_ref, name, model_program(name, GREEN), model.gpus,
                                100 + model.priority, GREEN))
    if rig.whisper and rig.whisper.gpus is None:
        parts.append(_gated(rig, conf_dir, rig_ref, WHISPER_PROGRAM, WHISPER_PROGRAM, [rig.whisper.gpu], 50))
    elif rig.whisper:  # placements: the planner starts one when transcriptions wait
        for gpu in rig.whisper.gpus:
            parts.append(_gated(rig, conf_dir, rig_ref, WHISPER_PROGRAM, placement_program(gpu), [gpu], 50,
                                placement_slot(gpu)))
    if rig.work:
        parts += _work_programs(rig, conf_dir, rig_ref)
    # Highest priority number: supervisord stops it first, so it drains before the servers go.
    parts.append(_program(rig, conf_dir, API_PROGRAM, f"llamarig --rig {rig_ref} api", {
        "autostart": "true", "autorestart": "true", "startsecs": 2, "priority": 999,
        "stopwaitsecs": math.ceil(rig.timeouts.drain_s) + 10,
        "environment": _env({"PYTHONUNBUFFERED": "1", "LLAMARIG_PROGRAM": API_PROGRAM})}))
    return "".join(parts).rstrip("\n") + "\n"


def _work_programs(rig: Rig, conf_dir: Path | None, rig_ref: str) -> list[str]:
    """The embedded Temporal first up and last down (priority 10); the workers last up and first
    down (1000): they stop polling and finish or cancel their tasks while the API still serves;
    the watchdog that kills a hung worker (work/watchdog.py)."""
    from llamarig.work.worker import GRACEFUL_S

    parts = []
    if rig.work.temporal == "embedded":
        parts.append(_program(rig, conf_dir, TEMPORAL_PROGRAM, f"llamarig --rig {rig_ref} temporal", {
            "autostart": "true", "autorestart": "true", "startsecs": 2, "priority": 10, "stopwaitsecs": 30,
            "environment": _env({"LLAMARIG_PROGRAM": TEMPORAL_PROGRAM})}))
    for role in ("cpu", "gpu"):
        name, command, extra = f"work-{role}", f"llamarig --rig {rig_ref} work {role}", {}
        if role == "cpu" and rig.work.cpu_processes > 1:  # work-cpu:work-cpu-0 .. (work/processes.py)
            name, command = f"{name}-%(process_num)d", f"{command} --index %(process_num)d"
            extra = {"numprocs": rig.work.cpu_processes, "process_name": "%(program_name)s-%(process_num)d",
                     "stdout_logfile": _here(rig.run_dir / "logs" / f"{name}.log", conf_dir)}
        env = {"PYTHONUNBUFFERED": "1", "LLAMARIG_PROGRAM": name}
        parts.append(_program(rig, conf_dir, f"work-{role}", command, {
            "autostart": "true", "autorestart": "true", "startsecs": 2, "priority": 1000,
            "stopwaitsecs": math.ceil(GRACEFUL_S + rig.work.cancel_grace_s) + 5, "environment": _env(env)} | extra))
    # An event listener: its stdout is supervisord's protocol, so its logs go to stderr's own file.
    parts.append(_section(f"eventlistener:{WATCHDOG_PROGRAM}", {
        "command": f"llamarig --rig {rig_ref} watchdog", "events": "TICK_5", "directory": _here(rig.root, conf_dir),
        "autostart": "true", "autorestart": "true", "startsecs": 1, "priority": 1001,
        "stderr_logfile": _here(rig.run_dir / "logs" / f"{WATCHDOG_PROGRAM}.log", conf_dir),
        "stderr_logfile_maxbytes": "10MB", "stderr_logfile_backups": 3,
        "environment": _env({"PYTHONUNBUFFERED": "1", "LLAMARIG_PROGRAM": WATCHDOG_PROGRAM})}))
    return parts


def always_on(rig: Rig) -> set[str]:
    """The programs (supervisord's groups) that start with supervisord and must keep running;
    the servers are the lifecycle manager's to start."""
    names = {API_PROGRAM}
    if rig.work:
        names |= {"work-cpu", "work-gpu", WATCHDOG_PROGRAM}
        names |= {TEMPORAL_PROGRAM} if rig.work.temporal == "embedded" else set()
    return names


def socket_path(rig: Rig) -> Path:
    return rig.run_dir / "supervisor.sock"
