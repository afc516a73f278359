"""The compute API's bearer keys: client keys (inference) and one operator key (the admin
routes, and everything that changes the rig), read from the files and environment variables
the rig names; never logged. Named keys are keystore.py's; the API looks both up by their
SHA-256 (api/compute/keyring.py)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from llamarig.shared.errors import RigError
from llamarig.shared.rig import Rig

MIN_LENGTH = 16  # a shorter key can be guessed by a loop of requests


@dataclass(frozen=True)
class Keys:
    client: tuple[bytes, ...] = ()
    operator: bytes | None = None

    @property
    def any(self) -> bool:
        return bool(self.client or self.operator)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve beyond this machine


def _from_file(rig: Rig, field: str, name: str | None) -> list[str]:
    if name is None:
        return []
    try:
        text = rig.resolve(name).read_text()
    except OSError as e:
        raise RigError(rig.source, [f"api.keys.{field}: cannot read {name}: {e.strerror}"]) from None
    keys = (line.split("#", 1)[0].strip() for line in text.splitlines())  # '#' starts a comment
    return [key for key in keys if key]


def _from_env(rig: Rig, field: str, environ, variable: str) -> list[str]:
    """Keys in $VARIABLE (comma-separated), and in the file named by $VARIABLE_FILE (Docker's
    secrets convention: the key stays out of the environment)."""
    keys = [k.strip() for k in environ.get(variable, "").split(",") if k.strip()]
    return keys + _from_file(rig, field, environ.get(variable + "_FILE") or None)


def key_variables(rig: Rig) -> list[str]:
    """The environment variables keys may come from: blanked for every program but the API."""
    k = rig.api.keys
    return [k.client_env, k.client_env + "_FILE", k.operator_env, k.operator_env + "_FILE"]


def _named_keys(rig: Rig) -> bool:
    """Some named key (llamarig keys add) is in force."""
    from llamarig.shared.keystore import KeyStore

    return any(k.revoked_at is None for k in KeyStore(rig.run_dir).all())


def load_keys(rig: Rig, environ=os.environ) -> Keys:
    """The keys the rig names; RigError, naming the field, for a file that cannot be read, a
    key too short, an operator key that is also a client key, or an API beyond loopback
    without a client key."""
    k = rig.api.keys
    client = _from_file(rig, "client_file", k.client_file) + _from_env(rig, "client_env", environ, k.client_env)
    operator = _from_file(rig, "operator_file", k.operator_file) + _from_env(rig, "operator_env", environ,
                                                                             k.operator_env)
    problems = [f"api.keys.{field}: a key is shorter than {MIN_LENGTH} characters"
                for field, keys in (("client_file", client), ("operator_file", operator))
                if any(len(key) < MIN_LENGTH for key in keys)]
    if len(set(operator)) > 1:
        problems.append(f"api.keys.operator_file: more than one operator key (file and ${k.operator_env} differ)")
    if set(operator) & set(client):
        problems.append("api.keys.operator_file: the operator key is also a client key; give clients their own")
    if not client and not is_loopback(rig.api.host) and not _named_keys(rig):
        problems.append(f"api.keys.client_file: api.host is {rig.api.host}, beyond loopback, and no client key "
                        f"is set: name a file of keys here, or set ${k.client_env} (comma-separated) or "
                        f"${k.client_env}_FILE (a file of keys, one per line), or add one (llamarig keys add NAME --scope client)")
    if problems:
        raise RigError(rig.source, problems)
    return Keys(tuple(key.encode() for key in dict.fromkeys(client)),
                operator[0].encode() if operator else None)
