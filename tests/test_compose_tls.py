"""docker-compose.tls.yml over docker-compose.yml, brought up as its header says
(`docker compose -f docker-compose.yml -f docker-compose.tls.yml up -d`) on the test dockerd,
with a CA the test makes standing in for ./tls/: the certificate and key reach the bundle as
Docker secrets, the official openai client trusts the CA over HTTPS, plain HTTP is refused, the
CLI and the workers inside the image use TLS (the README's plan runs), and Prometheus scrapes
the bundle over HTTPS with alerts/prometheus-tls.yml. The base file is test_compose.py's local
copy, cut to the bundle, its Temporal and Prometheus (the rest is brought up there)."""
from __future__ import annotations

import os
import ssl

import httpx
import openai
import pytest
import yaml

from dockerd import REPO, build_monitoring_image
from helpers import wait_for
from test_compose import CLIENT, Stack, _local_copy, _ready, _targets, run_the_demo_plan
from test_tls import make_ca

pytestmark = pytest.mark.slow
KEPT = ("llamarig", "temporal", "prometheus")
IMAGE_UID = 10001  # the image's user, who must read key.pem (docker-compose.tls.yml)


def _cut(compose: dict) -> dict:
    services = compose["services"]
    for name in [n for n in services if n not in KEPT]:
        del services[name]
    for service in services.values():
        deps = service.get("depends_on")
        if isinstance(deps, list):
            service["depends_on"] = [d for d in deps if d in KEPT]
        elif isinstance(deps, dict):
            service["depends_on"] = {d: c for d, c in deps.items() if d in KEPT}
        if not service.get("depends_on"):
            service.pop("depends_on", None)
    return compose


def _override(files: dict) -> dict:
    """docker-compose.tls.yml as shipped, its ./tls/ files in the test's folder."""
    override = yaml.safe_load((REPO / "docker-compose.tls.yml").read_text())
    names = {"tls_cert": "cert", "tls_key": "key", "tls_ca": "ca"}
    assert set(override["secrets"]) == set(names), "docker-compose.tls.yml's secrets changed: update this test"
    for secret, file in names.items():
        override["secrets"][secret]["file"] = str(files[file])
    return override


@pytest.fixture(scope="module")
def tls_stack(docker, image, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compose-tls")
    files = make_ca(folder, names=("127.0.0.1", "localhost", "llamarig"))
    os.chown(files["key"], IMAGE_UID, IMAGE_UID)  # as the override's header asks, and no wider
    os.chmod(files["key"], 0o600)
    base, published = _local_copy(image.tag, build_monitoring_image(docker))
    (folder / "base.yml").write_text(yaml.safe_dump(_cut(base)))
    (folder / "tls.yml").write_text(yaml.safe_dump(_override(files)))
    context = ssl.create_default_context(cafile=str(files["ca"]))
    s = Stack(docker, [folder / "base.yml", folder / "tls.yml"], f"llamarig-tls-{os.getpid()}", published,
              scheme="https", verify=context)
    s.compose("up", "-d")
    try:
        wait_for(lambda: _ready(s), 180, "llamarig over https: /ready 200", interval=0.5)
        yield s, files, context
    finally:
        s.compose("down", "-v", "-t", "120", timeout=600)


def test_the_openai_client_trusting_the_teams_ca_and_plain_http_refused(tls_stack):
    stack, files, context = tls_stack
    client = openai.OpenAI(base_url=stack.url("llamarig", "/v1"), api_key=CLIENT, max_retries=0,
                           http_client=httpx.Client(verify=context))
    models = [m.id for m in client.models.list().data if m.id != "embed"]
    chat = client.chat.completions.create(model=models[0], messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.usage.completion_tokens >= 1
    with pytest.raises(httpx.HTTPError):  # the same port, plain HTTP: no answer but a closed connection
        httpx.get(f"http://127.0.0.1:{stack.published['llamarig']}/ready", timeout=10)
    with pytest.raises(openai.APIConnectionError):  # a client that does not trust the team's CA
        openai.OpenAI(base_url=stack.url("llamarig", "/v1"), api_key=CLIENT, max_retries=0).models.list()
    mounted = stack.compose("exec", "-T", "llamarig", "ls", "/run/secrets").stdout.split()
    assert sorted(mounted) == ["tls_ca", "tls_cert", "tls_key"]
    env = stack.compose("exec", "-T", "llamarig", "env").stdout
    assert "BEGIN" not in env and files["key"].read_text().splitlines()[1] not in env  # paths, never the key


def test_the_cli_and_the_workers_inside_the_image_use_tls(tls_stack):
    """The README's plan, submitted with the CLI in the container: the CLI, and the workers
    that report to the compute API, reach it over HTTPS trusting ca.pem from the secret."""
    run_the_demo_plan(tls_stack[0])


def test_prometheus_scrapes_the_bundle_over_https_with_the_ca(tls_stack):
    stack, _, _ = tls_stack
    wanted = ("llamarig/metrics", "llamarig-work/metrics/work/gpu", "llamarig-work/metrics/work/cpu")
    targets = wait_for(lambda: (t := _targets(stack)) and all(t.get(w) == "up" for w in wanted) and t, 120,
                       "the bundle's targets up over https (scraped every 15 s)", interval=1)
    active = stack.get("prometheus", "/api/v1/targets").json()["data"]["activeTargets"]
    bundle = next(t for t in active if t["labels"]["job"] == "llamarig")
    assert bundle["scrapeUrl"].startswith("https://llamarig:8000/"), bundle
    assert targets
