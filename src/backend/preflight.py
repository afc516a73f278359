"""What a start needs, checked before supervisord starts. Every start (`llamarig up`, `run`):
the keys where the API listens beyond loopback, the embedded engine's CLI, no supervisord of
this rig alive, every port of the rig free, the engine's namespace chosen. The image's
(`run --preflight`) also: a writable run folder, model folders that hold something, and every
required model file accepted by the verifier. Each problem is a RigError naming the rig field,
so the CLI prints one line and exits 2 with nothing started."""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llamarig.backend import ports
from llamarig.backend.daemon import Daemon
from llamarig.backend.launch import checks_for, verify_unit
from llamarig.backend.supervisor_conf import WHISPER_PROGRAM
from llamarig.shared.errors import RigError
from llamarig.shared.keys import load_keys
from llamarig.shared.tls import tls_files
from llamarig.shared.rig import Rig


def check(rig: Rig) -> None:
    """The image's start: the run folder and the model files too."""
    load_keys(rig)
    _check_run_dir(rig)
    _check_model_folders(rig)
    _check_required_files(rig)
    startable(rig)


def startable(rig: Rig) -> None:
    from llamarig.work import namespace
    from llamarig.work.cli_cmds import check_embedded

    load_keys(rig)
    tls_files(rig)
    check_embedded(rig)
    _not_running(rig)
    ports.check(rig)
    if rig.work and rig.work.temporal == "embedded":
        namespace.of_rig(rig)  # before any program: they all read it


def _not_running(rig: Rig) -> None:
    pid = Daemon(rig).pid()
    if pid:
        raise RigError(rig.source, [f"paths.run_dir: this rig's supervisord already runs (pid {pid}, {rig.run_dir}): "
                                    "`llamarig status` shows it, `llamarig down` stops it"])


def _check_run_dir(rig: Rig) -> None:
    run = rig.run_dir
    try:
        run.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run):
            pass
    except OSError as e:
        raise RigError(rig.source, [f"paths.run_dir: {run} is not writable by uid {os.getuid()} "
                                    f"({e.strerror}): give this user a writable folder there (in the "
                                    f"image: -v llamarig-run:{run}, or chown {os.getuid()} the folder)"]) from None


def _model_folders(rig: Rig) -> dict[Path, str]:
    """Each folder the model files live in, with the first rig field that points into it."""
    folders: dict[Path, str] = {}
    for name, model in rig.models.items():
        folders.setdefault(rig.resolve(model.path).parent, f"models.{name}.path")
    if rig.whisper:
        folders.setdefault(rig.resolve(rig.whisper.model_dir).parent, "whisper.model_dir")
    return folders


def _check_model_folders(rig: Rig) -> None:
    for folder, field in _model_folders(rig).items():
        if not folder.is_dir() or not any(folder.iterdir()):
            state = "is empty" if folder.is_dir() else "does not exist"
            raise RigError(rig.source, [f"{field}: the models folder {folder} {state}: put the model files "
                                        f"there (in the image: -v /srv/models:{folder}:ro)"])


def _required_units(rig: Rig) -> list[str]:
    units = [name for name, model in rig.models.items() if model.required]
    return units + ([WHISPER_PROGRAM] if rig.whisper and rig.whisper.required else [])


def _field(unit: str) -> str:
    return "whisper.model_dir" if unit == WHISPER_PROGRAM else f"models.{unit}.path"


def _check_required_files(rig: Rig) -> None:
    units = _required_units(rig)
    checks = checks_for(rig, settle=False)  # the launch gate settles each file again before its start
    with ThreadPoolExecutor(max(1, len(units))) as pool:
        verdicts = dict(zip(units, pool.map(lambda u: verify_unit(rig, u, checks), units)))
    refused = [f"{_field(u)}: {v.code}: {v.reason}" for u, v in verdicts.items() if not v.ok]
    if refused:
        raise RigError(rig.source, refused + ["a required model's file was refused (`llamarig verify` shows "
                                              "every file): fix it, or set its `required: false`"])
