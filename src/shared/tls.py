"""HTTPS for the compute API: which certificate it serves (the rig's api.tls, else the files
$LLAMARIG_TLS_*_FILE name: Docker secrets), the URL its own clients (the CLI, the workers, the
plan routes) call it at, and what they trust. Checked before anything starts: a certificate
without its key, an unreadable file, or a rig that requires TLS beyond loopback without it is
a RigError naming the field."""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from llamarig.shared.errors import RigError
from llamarig.shared.keys import is_loopback
from llamarig.shared.rig import Rig

ENV = {"cert_file": "LLAMARIG_TLS_CERT_FILE", "key_file": "LLAMARIG_TLS_KEY_FILE", "ca_file": "LLAMARIG_TLS_CA_FILE"}


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None


def _file(rig: Rig, field: str, environ) -> Path | None:
    name = getattr(rig.api.tls, field) or environ.get(ENV[field]) or None
    return rig.resolve(name) if name else None


def tls_files(rig: Rig, environ=os.environ) -> TlsFiles | None:
    """The API's certificate, key and CA, or None for plain HTTP; RigError as the module says."""
    cert, key, ca = (_file(rig, f, environ) for f in ("cert_file", "key_file", "ca_file"))
    problems = []
    if (cert is None) != (key is None):
        missing = "key_file" if key is None else "cert_file"
        problems.append(f"api.tls.{missing}: api.tls.cert_file and key_file go together (or "
                        f"${ENV['cert_file']} and ${ENV['key_file']}); one is missing")
    for field, path in (("cert_file", cert), ("key_file", key), ("ca_file", ca)):
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"api.tls.{field}: cannot read {path}")
    if cert is None and rig.api.tls.required and not is_loopback(rig.api.host):
        problems.append(f"api.tls.required: api.host is {rig.api.host}, beyond loopback, and no certificate is set "
                        f"(api.tls.cert_file and key_file, or ${ENV['cert_file']} and ${ENV['key_file']})")
    if problems:
        raise RigError(rig.source, problems)
    return TlsFiles(cert, key, ca) if cert else None


def api_url(rig: Rig, host: str = "127.0.0.1", environ=os.environ) -> str:
    scheme = "https" if tls_files(rig, environ) else "http"
    return f"{scheme}://{host}:{rig.api.port}"


def loopback_trust(rig: Rig, environ=os.environ) -> ssl.SSLContext | bool:
    """What a client of this rig's API on loopback verifies: the chain up to api.tls.ca_file (or
    the system's CAs), not the host name, which names the rig as others reach it."""
    files = tls_files(rig, environ)
    if files is None:
        return True
    context = ssl.create_default_context(cafile=str(files.ca) if files.ca else None)
    context.check_hostname = False
    return context


def peer_trust(rig: Rig, environ=os.environ) -> ssl.SSLContext | bool:
    """What a worker verifies on another rig (work.peers): the chain and the host name, with
    api.tls.ca_file added to the system's CAs where a team signs its own certificates."""
    files = tls_files(rig, environ)
    if files is None or files.ca is None:
        return True
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_default_certs()
    return context
