"""The `llamarig` command. Thin: each subcommand calls a module that does the work."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llamarig.shared.errors import LlamarigError

DEFAULT_RIG = "runtime/rig.yaml"


def _rig(args):
    from llamarig.shared.rig import load_rig

    return load_rig(args.rig)


def cmd_render(args) -> int:
    from llamarig.backend.supervisor_conf import render

    out = Path(args.out)
    text = render(_rig(args), out.resolve().parent)
    if args.check:
        same = out.exists() and out.read_text() == text
        print(f"{out}: {'matches the rig' if same else 'differs from the rig: run llamarig render'}")
        return 0 if same else 1
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_rig_doc(args) -> int:
    from llamarig.shared.rig import field_docs

    for path, default, description in field_docs():
        print(f"{path}  (default: {default})\n    {description}")
    return 0


def cmd_verify(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from concurrent.futures import ThreadPoolExecutor

    from llamarig.backend.launch import checks_for, verify_unit
    from llamarig.backend.supervisor_conf import WHISPER_PROGRAM

    rig = _rig(args)
    units = list(rig.models) + ([WHISPER_PROGRAM] if rig.whisper else [])
    checks = checks_for(rig, settle=not args.no_settle)
    with ThreadPoolExecutor(max(1, len(units))) as pool:  # settle windows overlap
        verdicts = dict(zip(units, pool.map(lambda u: verify_unit(rig, u, checks), units)))
    if args.json:
        print(json.dumps({u: v.as_dict() for u, v in verdicts.items()}, indent=2))
    else:
        table = Table(title=f"model files of {args.rig}")
        for col in ("unit", "verdict", "code", "reason"):
            table.add_column(col)
        for u, v in verdicts.items():
            table.add_row(u, "[green]ok[/]" if v.ok else "[red]refused[/]", v.code, v.reason)
        Console().print(table)
    return 0 if all(v.ok for v in verdicts.values()) else 1


def cmd_launch(args) -> int:
    # The plan spares the gate the rig's imports (pydantic, YAML) and NVML; see backend/gate.py.
    from llamarig.backend import gate
    from llamarig.shared.logs import setup_logging

    setup_logging()
    plan = gate.read_plan(args.plan, args.rig) if args.plan else None
    if plan and (plan.unit, plan.slot) == (args.unit, args.slot):
        return gate.run(plan)
    from llamarig.backend.launch import launch

    return launch(_rig(args), args.unit, args.slot)


def cmd_api(args) -> int:
    from llamarig.shared.gpus import start_nvml_early

    from llamarig.shared.keys import load_keys
    from llamarig.shared.tls import tls_files

    rig = _rig(args)
    load_keys(rig)  # nothing starts where the API would listen beyond loopback without a key
    tls_files(rig)  # nor with half a certificate, or without one where the rig requires it
    start_nvml_early(rig.gpus)  # meanwhile, the lifecycle manager's modules import
    from llamarig.api.compute.serve import serve
    from llamarig.shared.logs import setup_logging

    setup_logging()
    serve(rig)
    return 0


def cmd_models_make(args) -> int:
    import zlib

    from llamarig.backend.models_make import GgufSize, make_gguf, make_whisper

    rig = _rig(args)
    size = GgufSize(layers=args.layers, width=args.width)
    for name, m in rig.models.items():
        path = rig.resolve(m.path)
        if path.exists() and not args.force:
            print(f"{name}: {path} exists (use --force to write it again)")
            continue
        make_gguf(path, size, seed=zlib.crc32(name.encode()))
        print(f"{name}: wrote {path} ({path.stat().st_size} bytes)")
    if rig.whisper:
        folder = rig.resolve(rig.whisper.model_dir)
        if (folder / "model.bin").exists() and not args.force:
            print(f"whisper: {folder} exists")
        else:
            make_whisper(folder)
            print(f"whisper: wrote {folder}")
    return 0


def _start(rig, name: str, args) -> int:
    """`run` (supervisord in the foreground) and `up` (in the background, showing the boot): the
    rig's checks, then its conf rendered into its run folder and started."""
    from llamarig.backend import preflight
    from llamarig.backend.daemon import Daemon, write_conf

    if name == "run":
        if args.preflight:
            preflight.check(rig)
        else:
            preflight.startable(rig)
        from llamarig import ops

        ops.exec_supervisord(rig, write_conf(rig))
    daemon = Daemon(rig)  # up: supervisord first, the operator commands' imports take a while
    started = daemon.state() != "RUNNING"
    if started:
        daemon.wait_shutdown()
        preflight.startable(rig)
        daemon.start()
    from llamarig import ops

    return ops.up(rig, daemon, started, args.timeout)


def cmd_supervisorctl(args) -> int:
    from llamarig.backend.daemon import write_conf
    from llamarig.backend.supervisor import with_our_bin

    rig = _rig(args)
    conf = write_conf(rig)  # the rig as it is now: `supervisorctl update` applies its changes
    os.environ["PATH"] = with_our_bin(os.environ.get("PATH", ""))
    os.execvp("supervisorctl", ["supervisorctl", "-c", str(conf), *args.arguments])


def _ops(name):
    def run(args) -> int:
        rig = _rig(args)
        if name in ("run", "up"):
            return _start(rig, name, args)
        from llamarig import ops

        if name == "status":
            return ops.status(rig, args.wide, args.json)
        if name == "down":
            return ops.down(rig)
        return ops.act(rig, args.name, name, drain=not getattr(args, "now", False))
    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamarig", description="Run and operate a llamarig bundle.")
    p.add_argument("--rig", default=DEFAULT_RIG, help=f"rig file (default {DEFAULT_RIG})")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("render", help="write supervisord.conf from the rig")
    s.add_argument("--out", default="supervisord.conf")
    s.add_argument("--check", action="store_true", help="exit 1 if the file differs from the rig")
    s.set_defaults(fn=cmd_render)
    sub.add_parser("rig-doc", help="every rig field: its path, default, unit and edge values").set_defaults(
        fn=cmd_rig_doc)
    s = sub.add_parser("verify", help="check every model file; exit 1 if one is refused")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-settle", action="store_true", help="skip the settle window")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("launch", help="(supervisord program) verify a unit's model, then exec its server")
    s.add_argument("unit")
    s.add_argument("--slot", default="blue", help="green: the second server of a blue-green reload, on "
                   "swap_port; gpuN: Whisper placed on GPU N (whisper.gpus)")
    s.add_argument("--plan", help="launch plan written by the lifecycle manager; used only if it was made "
                   "from the rig file as it is now, else the rig is read")
    s.set_defaults(fn=cmd_launch)
    sub.add_parser("api", help="(supervisord program) run the compute API").set_defaults(fn=cmd_api)
    s = sub.add_parser("models", help="generated tiny models")
    s.add_argument("action", choices=["make"])
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--width", type=int, default=64)
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_models_make)
    for name, text in (("run", "supervisord in the foreground"), ("up", "start in the background, show waves")):
        s = sub.add_parser(name, help=f"{text}; the rig is rendered into RUN_DIR/supervisord.conf and that is started")
        s.add_argument("--timeout", type=float, default=600)
        if name == "run":
            s.add_argument("--preflight", action="store_true",
                           help="(the image's start) also refuse, with one line and exit 2, what cannot start: the "
                           "run folder, the models folder, required model files")
        s.set_defaults(fn=_ops(name))
    s = sub.add_parser("status", help="every unit's and GPU's state, one line each (80 columns)")
    s.add_argument("--wide", action="store_true", help="whole reasons, however long the lines")
    s.add_argument("--json", action="store_true", help="the compute API's /admin/units body")
    s.set_defaults(fn=_ops("status"))
    sub.add_parser("down", help="drain and stop everything, then supervisord; returns once it exited").set_defaults(
        fn=_ops("down"))
    s = sub.add_parser("supervisorctl", help="supervisorctl on this rig's supervisord, through "
                       "RUN_DIR/supervisord.conf rendered from the rig first (so `update` applies the rig's "
                       "changes): llamarig --rig R supervisorctl status")
    s.add_argument("arguments", nargs=argparse.REMAINDER, help="supervisorctl's own (status, restart NAME, tail ...)")
    s.set_defaults(fn=cmd_supervisorctl)
    for name in ("start", "stop", "reset", "reload"):
        s = sub.add_parser(name, help=f"{name} one unit")
        s.add_argument("name")
        if name == "stop":
            s.add_argument("--now", action="store_true", help="do not wait for in-flight requests")
        s.set_defaults(fn=_ops(name))
    _work_parsers(sub)
    return p


def _work_parsers(sub) -> None:
    from llamarig.work import cli_cmds as w

    sub.add_parser("temporal", help="(supervisord program) the embedded Temporal dev server").set_defaults(
        fn=lambda a: w.run_temporal(_rig(a)))
    s = sub.add_parser("work", help="(supervisord program) a worker: gpu polls QUEUE@gpu, cpu QUEUE@cpu")
    s.add_argument("role", choices=["gpu", "cpu"])
    s.add_argument("--index", type=int, default=None, help="which of work.cpu_processes this is (supervisord's "
                   "process_num)")
    s.set_defaults(fn=lambda a: w.run_worker(_rig(a), a.role, a.index))
    sub.add_parser("watchdog", help="(supervisord event listener) kills a worker hung past "
                   "work.heartbeat_timeout_s").set_defaults(fn=lambda a: w.run_watchdog(_rig(a)))
    s = sub.add_parser("backup", help="a consistent copy, while the bundle runs: rig, manifest, engine database, "
                       "plan results")
    s.add_argument("dest", help="folder to write the backup folder into")
    s.set_defaults(fn=lambda a: w.backup(_rig(a), a.dest))
    s = sub.add_parser("restore", help="put a backup's engine database and plan results back (bundle stopped)")
    s.add_argument("source", help="a backup folder made by llamarig backup")
    s.set_defaults(fn=lambda a: w.restore(_rig(a), a.source))
    s = sub.add_parser("prune-plans", help="remove old plans' files from the run folder: records, task folders, "
                       "outputs")
    s.add_argument("--older-than-days", type=_days, required=True, metavar="DAYS",
                   help="plans no longer running whose files have not changed for DAYS days")
    s.add_argument("--dry-run", action="store_true", help="name them, remove nothing")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=lambda a: w.prune_plans(_rig(a), a.older_than_days, a.dry_run, a.json))
    _plan_parsers(sub, w)
    from llamarig import team_cli

    team_cli.add_parsers(sub, _rig)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not 0 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r}: days from 0 to 36500 (0: every plan not running)")
    return days


WAIT = "wait until the plan ends, show it, and exit 0 if it succeeded, else 1 (Ctrl-C leaves it running)"


def _plan_parsers(sub, w) -> None:
    s = sub.add_parser("submit", help="validate a plan file and submit it")
    s.add_argument("plan")
    s.add_argument("--infer-class", action="store_true", help="give a task without a class the one its "
                   "command suggests, recorded on the task")
    s.add_argument("--reuse", metavar="PLAN_ID", help="an ended plan: its tasks that succeeded with the same "
                   "definition (and dependencies) are not run again")
    s.add_argument("--wait", action="store_true", help=WAIT)
    s.set_defaults(fn=lambda a: w.submit(_rig(a), a.plan, a.infer_class, a.reuse, a.wait))
    s = sub.add_parser("retry", help="run an ended plan again: what failed or was cancelled, and its dependents")
    s.add_argument("plan_id")
    s.add_argument("--wait", action="store_true", help=WAIT)
    s.set_defaults(fn=lambda a: w.retry(_rig(a), a.plan_id, a.wait))
    s = sub.add_parser("plans", help="the plans, newest first")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=lambda a: w.plans(_rig(a), a.json))
    s = sub.add_parser("plan", help="one plan: each task's state, attempt, worker, GPU, duration, error")
    s.add_argument("plan_id")
    s.add_argument("--json", action="store_true")
    s.add_argument("--wait", action="store_true", help=WAIT)
    s.add_argument("--items", metavar="TASK", help="every item of a for_each task: index, state, item, where its "
                   "output is or why it failed")
    s.set_defaults(fn=lambda a: w.show_items(_rig(a), a.plan_id, a.items, a.json) if a.items else
                   w.show(_rig(a), a.plan_id, a.json, a.wait))
    s = sub.add_parser("cancel", help="cancel a plan (its commands get SIGTERM, then SIGKILL)")
    s.add_argument("plan_id")
    s.set_defaults(fn=lambda a: w.cancel(_rig(a), a.plan_id))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except LlamarigError as e:
        print(f"llamarig: {e.code}: {e.reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
