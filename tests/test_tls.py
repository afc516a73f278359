"""HTTPS on the compute API, with a CA the test makes: the official openai client trusting that
CA, plain HTTP and unknown CAs refused, the CLI over TLS, and the rig's checks (a certificate
without its key; a rig that requires TLS beyond loopback)."""
from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from helpers import llamarig, model_entry, running_bundle, write_rig
from llamarig.shared.errors import RigError
from llamarig.shared.rig import load_rig
from llamarig.shared.tls import tls_files

pytestmark = pytest.mark.slow
CLIENT, OPERATOR = "tls-client-key-0123456789", "tls-operator-key-0123456789"


def make_ca(folder: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A CA, and a certificate it signed for `names` (IP addresses and host names; openssl)."""
    f = {n: folder / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=llamarig test CA",
        "-keyout", str(f["ca-key"]), "-out", str(f["ca"]))
    csr = folder / "cert.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(f["key"]), "-out", str(csr))
    ext = folder / "san.ext"
    alt = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)
    ext.write_text(f"subjectAltName={alt}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(f["ca"]), "-CAkey", str(f["ca-key"]), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(f["cert"]))
    return f


@pytest.fixture(scope="module")
def tls(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("tls")
    files = make_ca(folder)
    (folder / "operator").write_text(OPERATOR)  # (a file: the CLI reads it too)
    rig = write_rig(folder, {"m": model_entry(models["gguf"], [0])},
                    api={"tls": {"cert_file": str(files["cert"]), "key_file": str(files["key"]),
                                 "ca_file": str(files["ca"])}, "keys": {"operator_file": str(folder / "operator")}})
    with running_bundle(folder, rig, env={"LLAMARIG_CLIENT_KEYS": CLIENT}, key=OPERATOR) as b:
        b.wait_ready(120)
        yield b, files


def test_the_openai_client_over_https_with_the_teams_ca(tls):
    b, files = tls
    assert b.api.startswith("https://")
    client = openai.OpenAI(base_url=b.api + "/v1", api_key=CLIENT, max_retries=0,
                           http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(files["ca"]))))
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.usage.completion_tokens >= 1
    chunks = list(client.completions.create(model="m", prompt="hi", max_tokens=4, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    with pytest.raises(openai.APIConnectionError):  # a client that does not trust the team's CA
        openai.OpenAI(base_url=b.api + "/v1", api_key=CLIENT, max_retries=0).models.list()
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port: no answer an HTTP client takes
        r = httpx.get(b.api.replace("https://", "http://") + "/health", timeout=5)
        assert r.status_code != 200
        raise httpx.HTTPError(f"answered {r.status_code}")


def test_the_cli_talks_to_the_api_over_tls(tls):
    b, _ = tls
    shown = llamarig(b.rig_path, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"m"' in shown.stdout


def test_half_a_certificate_or_none_where_required_is_refused(tmp_path, models, tls):
    _, files = tls
    half = load_rig(write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])},
                              api={"tls": {"cert_file": str(files["cert"])}}))
    with pytest.raises(RigError) as e:
        tls_files(half, environ={})
    assert e.value.problems[0].startswith("api.tls.key_file: api.tls.cert_file and key_file go together")
    required = load_rig(write_rig(tmp_path, {"m": model_entry(models["gguf"], [0])},
                                  api={"host": "0.0.0.0", "tls": {"required": True}}))
    with pytest.raises(RigError) as e:
        tls_files(required, environ={})
    assert any(p.startswith("api.tls.required: api.host is 0.0.0.0") for p in e.value.problems)
    secrets = {"LLAMARIG_TLS_CERT_FILE": str(files["cert"]), "LLAMARIG_TLS_KEY_FILE": str(files["key"])}
    assert tls_files(required, environ=secrets).cert == files["cert"]  # Docker's secrets, named by the environment


async def test_the_workers_client_over_tls_checks_the_chain_not_the_loopback_name(tls, tmp_path):
    from llamarig.shared.tls import api_url, loopback_trust
    from llamarig.work.api_client import ApiRefused, ComputeApi

    b, files = tls
    rig = b.rig
    api = ComputeApi(api_url(rig), CLIENT, 10, verify=loopback_trust(rig))
    try:
        said = await api.chat("m", [{"role": "user", "content": "hi"}], 2, 0.0)  # an llm task's call
        assert isinstance(said["text"], str)
    finally:
        await api.close()
    other = make_ca(tmp_path)  # a CA the rig does not name
    stranger = ComputeApi(api_url(rig), CLIENT, 10, verify=ssl.create_default_context(cafile=str(other["ca"])))
    try:
        with pytest.raises(ApiRefused) as e:
            await stranger.chat("m", [{"role": "user", "content": "hi"}], 2, 0.0)
        assert e.value.code == "api_unreachable" and "CERTIFICATE_VERIFY_FAILED" in e.value.reason
    finally:
        await stranger.close()
