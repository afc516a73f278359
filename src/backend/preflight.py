"""What a start needs, checked before supervisord starts (`llamarig run --preflight`, the image's
entrypoint): the keys where the API listens beyond loopback, a writable run folder, model folders
that hold something, and every required model file accepted by the verifier. Each problem is a
RigError naming the rig field, so the CLI prints one line and exits 2 with nothing started."""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llamarig.backend.launch import checks_for, verify_unit
from llamarig.backend.supervisor_conf import WHISPER_PROGRAM, render
from llamarig.shared.errors import RigError
from llamarig.shared.keys import load_keys
from llamarig.shared.rig import Rig


def check(rig: Rig) -> None:
    load_keys(rig)
    _check_run_dir(rig)
    _check_model_folders(rig)
    _check_required_files(rig)


def render_conf(rig: Rig) -> Path:
    """supervisord.conf for this rig, written into the run folder (the image's /app is not the
    user's to write, and a mounted rig must not start with the build's render), with absolute
    paths: the image links /app/supervisord.conf to it, so a plain `supervisorctl status` works."""
    conf = rig.run_dir / "supervisord.conf"
    conf.write_text(render(rig, None))
    return conf


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
