"""The checked-in supervisord.conf is the render of the default rig."""
import configparser
from pathlib import Path

from llamarig.backend.supervisor_conf import gate_startsecs, render
from llamarig.shared.rig import load_rig

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_conf_matches_the_default_rig():
    rendered = render(load_rig(ROOT / "runtime/rig.yaml"), ROOT)
    assert (ROOT / "supervisord.conf").read_text() == rendered, "run `llamarig render` and commit"


def test_conf_shape():
    rig = load_rig(ROOT / "runtime/rig.yaml")
    conf = configparser.RawConfigParser()
    conf.read_string(render(rig, ROOT))
    assert "inet_http_server" not in conf
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["supervisord"]["nodaemon"] == "true"
    brain = conf["program:llama-brain"]
    assert 'CUDA_VISIBLE_DEVICES="0,3"' in brain["environment"]
    assert brain["autostart"] == "false" and brain["startretries"] == "0"
    assert brain["stopasgroup"] == brain["killasgroup"] == "true"
    assert int(brain["startsecs"]) == gate_startsecs(rig) > rig.timeouts.model_wait_s
    for name in ("llama-worker-1", "llama-worker-2", "llama-worker-3", "whisper@1", "whisper@2", "whisper@4",
                 "compute-api"):
        assert f"program:{name}" in conf
    assert 'CUDA_VISIBLE_DEVICES="2"' in conf["program:whisper@2"]["environment"]
    assert "--slot gpu2" in conf["program:whisper@2"]["command"] and conf["program:whisper@2"]["autostart"] == "false"
    assert 'CUDA_VISIBLE_DEVICES="4"' in conf["program:llama-worker-3"]["environment"]
    # The API stops first (highest priority) so it drains before the servers go.
    assert int(conf["program:compute-api"]["priority"]) > max(
        int(conf[s]["priority"]) for s in conf.sections() if s.startswith("program:llama-"))


def test_a_swap_port_adds_the_green_program(tmp_path):
    from llamarig.backend.supervisor_conf import render
    from llamarig.shared.rig import load_rig

    text = render(load_rig("runtime/rig.yaml"), tmp_path)
    assert "[program:llama-brain_green]" in text
    assert "launch brain --slot green" in text
