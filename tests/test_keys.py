"""Keys from the rig's files and environment variables, and the refusals that keep a bundle
from starting open."""
import pytest

from helpers import model_entry, write_rig
from llamarig.api.compute.keyring import LEGACY_CLIENT, KeyRing
from llamarig.shared.errors import RigError
from llamarig.shared.keys import is_loopback, load_keys
from llamarig.shared.rig import load_rig

CLIENT, OPERATOR = "c" * 24, "o" * 24


def _rig(tmp_path, models, **api):
    return load_rig(write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])}, api=api))


def test_loopback_without_keys_is_open_and_beyond_loopback_is_refused_naming_the_field(tmp_path, models):
    assert not load_keys(_rig(tmp_path, models), environ={}).any
    with pytest.raises(RigError) as e:
        load_keys(_rig(tmp_path, models, host="0.0.0.0"), environ={})
    assert any(p.startswith("api.keys.client_file: api.host is 0.0.0.0") and "LLAMARIG_CLIENT_KEYS" in p
               for p in e.value.problems)
    keys = load_keys(_rig(tmp_path, models, host="0.0.0.0"), environ={"LLAMARIG_CLIENT_KEYS": f"{CLIENT}, {'d' * 20}"})
    ring = KeyRing(keys, None)
    assert ring.identify(CLIENT.encode()) is ring.identify(b"d" * 20) is LEGACY_CLIENT
    assert ring.identify(b"x" * 24) is None and keys.operator is None


def test_keys_from_files_with_comments_and_the_operator_key_works_for_clients(tmp_path, models):
    (tmp_path / "clients").write_text(f"# team keys\n{CLIENT}  # alice\n\n")
    (tmp_path / "operator").write_text(OPERATOR + "\n")
    rig = _rig(tmp_path, models, keys={"client_file": str(tmp_path / "clients"),
                                       "operator_file": str(tmp_path / "operator")})
    keys = load_keys(rig, environ={})
    assert keys.client == (CLIENT.encode(),) and keys.operator == OPERATOR.encode()
    ring = KeyRing(keys, None)
    assert ring.identify(OPERATOR.encode()).scope == "operator" and ring.identify(CLIENT.encode()).scope == "client"


@pytest.mark.parametrize("environ, field, words", [
    ({"LLAMARIG_CLIENT_KEYS": "short"}, "api.keys.client_file", "shorter than 16"),
    ({"LLAMARIG_CLIENT_KEYS": CLIENT, "LLAMARIG_OPERATOR_KEY": CLIENT}, "api.keys.operator_file", "also a client key"),
])
def test_bad_keys_are_refused_naming_the_field(tmp_path, models, environ, field, words):
    with pytest.raises(RigError) as e:
        load_keys(_rig(tmp_path, models), environ=environ)
    assert any(p.startswith(field) and words in p for p in e.value.problems), e.value.problems


def test_an_unreadable_key_file_names_the_field(tmp_path, models):
    with pytest.raises(RigError) as e:
        load_keys(_rig(tmp_path, models, keys={"operator_file": str(tmp_path / "missing")}), environ={})
    assert e.value.problems[0].startswith("api.keys.operator_file: cannot read")


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "rig.local"]))
