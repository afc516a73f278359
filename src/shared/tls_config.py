"""The rig's api.tls section (the compute API's HTTPS; shared/tls.py reads it)."""
from __future__ import annotations

from pydantic import Field

from llamarig.shared.rig_types import Strict


class TlsConfig(Strict):
    cert_file: str | None = Field(None, description="PEM certificate (chain) the compute API serves HTTPS with. "
                                  "null: $LLAMARIG_TLS_CERT_FILE when set (Docker secrets), else plain HTTP. Given "
                                  "with key_file or not at all.")
    key_file: str | None = Field(None, description="PEM private key of cert_file. null: $LLAMARIG_TLS_KEY_FILE "
                                 "when set.")
    ca_file: str | None = Field(None, description="PEM of the CA that signed cert_file, which the CLI and the "
                                "workers trust when they call this API (on loopback they check the chain, not the "
                                "host name: the certificate names the rig as others reach it). null: "
                                "$LLAMARIG_TLS_CA_FILE when set, else the system's CAs.")
    required: bool = Field(False, description="true: with api.host beyond loopback, refuse to start without "
                           "cert_file and key_file (a rig that must never serve keys over plain HTTP).")
