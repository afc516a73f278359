"""The image's entrypoint, run as a script: an API beyond loopback without a key refuses to
start with one line saying how to give one, and nothing starts."""
import os
import socket
import subprocess
from pathlib import Path

import yaml

from helpers import PATH, model_entry, write_rig

ENTRYPOINT = Path(__file__).resolve().parent.parent / "runtime" / "entrypoint.sh"


def _run(rig: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAMARIG_")}
    return subprocess.run([str(ENTRYPOINT)], cwd=cwd, timeout=60,
                          capture_output=True, text=True, env={**clean, "PATH": PATH, "LLAMARIG_RIG": str(rig), **env})


def _image_rig(tmp_path, models) -> Path:
    rig = write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])})
    data = yaml.safe_load(rig.read_text())
    data["api"]["host"] = "0.0.0.0"  # as the Dockerfile sets it
    rig.write_text(yaml.safe_dump(data))
    return rig


def test_no_keys_beyond_loopback_refuses_with_one_line_and_starts_nothing(tmp_path, models):
    result = _run(_image_rig(tmp_path, models), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "api.keys.client_file: api.host is 0.0.0.0" in lines[0]
    assert "LLAMARIG_CLIENT_KEYS" in lines[0] and "LLAMARIG_CLIENT_KEYS_FILE" in lines[0]
    assert not (tmp_path / "run" / "supervisor.sock").exists()


def test_a_bad_rig_refuses_naming_the_field(tmp_path, models):
    rig = _image_rig(tmp_path, models)
    data = yaml.safe_load(rig.read_text())
    data["api"]["max_body_mib"] = 0
    rig.write_text(yaml.safe_dump(data))
    result = _run(rig, tmp_path, LLAMARIG_CLIENT_KEYS="k" * 20)
    assert result.returncode == 2 and "api.max_body_mib" in result.stderr


def test_a_key_file_from_the_environment_is_accepted(tmp_path, models):
    """A key too short in the named file is refused: proof the file was read, without starting a bundle."""
    keys = tmp_path / "keys"
    keys.write_text("short\n")
    result = _run(_image_rig(tmp_path, models), tmp_path, LLAMARIG_CLIENT_KEYS_FILE=str(keys))
    assert result.returncode == 2 and "shorter than 16" in result.stderr


def test_a_port_the_rig_needs_taken_is_refused_naming_the_field_and_who_holds_it(tmp_path, models):
    rig = _image_rig(tmp_path, models)
    port = yaml.safe_load(rig.read_text())["api"]["port"]
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        result = _run(rig, tmp_path, LLAMARIG_CLIENT_KEYS="k" * 20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"api.port: port {port} on 0.0.0.0 is already in use by pid {os.getpid()}" in lines[0]
    assert not (tmp_path / "run" / "supervisor.sock").exists()
