"""docker-compose.yml brought up by Debian's docker-compose on the test dockerd: the bundle (the CPU
image), Temporal, Prometheus with the alert rules, and Alertmanager, with the file's own network,
service names, environment, mounts and configs. What cannot run here is swapped in a copy of the
file, and only that: no registry (Temporal is the pinned CLI's dev server, not the server on
PostgreSQL, so no database, and the schema one-shot only exits 0; the namespace one-shot runs on
the Debian base with that CLI; Prometheus and Alertmanager are Debian's; no Grafana, no Temporal
UI), no GPU (no device reservation), and published ports on free loopback ports. The tests share
one stack and run in file order (the plan of the first is counted in the last)."""
from __future__ import annotations

import os
import subprocess

import httpx
import pytest
import yaml

from dockerd import REPO, build_monitoring_image, temporal_beside
from helpers import HTTP, free_port, wait_for

pytestmark = pytest.mark.slow

CLIENT, OPERATOR = "client-key-0123456789", "operator-key-0123456789"
STANDS_IN = "an image that cannot be pulled here"


def _local_copy(image_tag: str, monitoring: str) -> tuple[dict, dict[str, int]]:
    """The compose file with what cannot run here swapped; (file, published host port per service)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for gone in ("temporal-db", "temporal-ui", "grafana"):
        del services[gone]
    # No database to set up: the schema one-shot only exits 0, so the server still starts after it.
    services["temporal-schema"] = {"image": "local/debian:bookworm", "entrypoint": ["true"]}
    del compose["volumes"]["temporal-db"]
    bundle = services["llamarig"]
    del bundle["build"], bundle["deploy"]
    bundle["image"] = image_tag
    mounts, command = temporal_beside()
    services["temporal"].update(image="local/debian:bookworm", entrypoint=command, volumes=mounts)
    # The namespace one-shot runs its own command with the same CLI the admin-tools image carries.
    services["temporal-namespace"].update(image="local/debian:bookworm")
    services["temporal-namespace"]["volumes"] += mounts
    services["prometheus"].update(image=monitoring, entrypoint=["/usr/bin/prometheus"])
    services["alertmanager"].update(image=monitoring, entrypoint=["/usr/bin/prometheus-alertmanager"])
    published = {}
    for name, service in services.items():
        service["labels"] = {"llamarig.test": "1"}  # removed by the session's dockerd clean-up if left
        if "ports" not in service:
            continue
        inside = int(service["ports"][0].split(":")[-1])
        published[name] = free_port()
        service["ports"] = [f"127.0.0.1:{published[name]}:{inside}"]
    return compose, published


class Stack:
    def __init__(self, docker, paths: list, project: str, published: dict[str, int], scheme: str = "http",
                 verify=True):
        """paths: the compose files, merged by docker-compose in order (-f each)."""
        self.docker, self.paths, self.project, self.published = docker, paths, project, published
        self.scheme, self.verify = scheme, verify

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        env = {**self.docker.env, "LLAMARIG_CLIENT_KEYS": CLIENT, "LLAMARIG_OPERATOR_KEY": OPERATOR}
        files = [arg for path in self.paths for arg in ("-f", str(path))]
        cmd = ["docker-compose", *files, "--project-directory", str(REPO), "-p", self.project, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        assert result.returncode == 0 or not check, f"{' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def url(self, service: str, path: str) -> str:
        scheme = self.scheme if service == "llamarig" else "http"
        return f"{scheme}://127.0.0.1:{self.published[service]}{path}"

    def get(self, service: str, path: str, **kw) -> httpx.Response:
        if service == "llamarig" and self.verify is not True:
            return httpx.get(self.url(service, path), timeout=10, verify=self.verify, **kw)
        return HTTP.get(self.url(service, path), timeout=10, **kw)


@pytest.fixture(scope="module")
def stack(docker, image, tmp_path_factory):
    compose, published = _local_copy(image.tag, build_monitoring_image(docker))
    path = tmp_path_factory.mktemp("compose") / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose))
    s = Stack(docker, [path], f"llamarig-test-{os.getpid()}", published)
    s.compose("up", "-d")
    yield s
    s.compose("down", "-v", "-t", "120", timeout=600)


def _ready(stack) -> bool:
    try:
        return stack.get("llamarig", "/ready").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_readme_s_plan_runs_on_the_compose_files_temporal(stack):
    """`docker compose exec llamarig llamarig submit runtime/plans/demo.yaml --wait`, as the README
    says (the operator key is in the container's environment)."""
    wait_for(lambda: _ready(stack), 120, "llamarig: /ready 200", interval=0.5)
    run_the_demo_plan(stack)


def run_the_demo_plan(stack) -> None:
    """The README's plan submitted with the CLI in the container, waited for; every task succeeded."""
    done = stack.compose("exec", "-T", "llamarig", "llamarig", "submit", "runtime/plans/demo.yaml", "--wait",
                         check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    view = stack.get("llamarig", f"/admin/plans/{done.stdout.split()[1]}",
                     headers={"Authorization": f"Bearer {OPERATOR}"}).json()
    assert {t["state"] for t in view["tasks"].values()} == {"succeeded"}, view


def test_the_namespace_one_shot_ends_well(stack):
    name = stack.compose("ps", "-q", "temporal-namespace").stdout.strip()
    logs = lambda: (lambda r: r.stdout + r.stderr)(stack.docker("logs", name))  # noqa: E731
    try:
        state = wait_for(lambda: (s := stack.docker.inspect(name)["State"])["Status"] == "exited" and s, 120,
                         "temporal-namespace to exit", interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}: {logs()[-2000:]}") from None
    assert state["ExitCode"] == 0, logs()
    assert "default" in logs(), logs()  # the namespace described (the dev server makes it)


def _targets(stack) -> dict[str, str]:
    active = stack.get("prometheus", "/api/v1/targets").json()["data"]["activeTargets"]
    return {f"{t['labels']['job']}{t['discoveredLabels']['__metrics_path__']}": t["health"] for t in active}


def test_prometheus_scrapes_every_target_of_alerts_prometheus_yml(stack):
    """The bundle's, each engine's and each worker's metrics through the compute API, and the
    engine's own: every target up (the embeddings model only once a request has placed it)."""
    wait_for(lambda: _ready(stack), 120, "llamarig: /ready 200", interval=0.5)
    wanted = {"llamarig/metrics", "llamarig-engines/metrics/engines/brain", "llamarig-engines/metrics/engines/worker-1",
              "llamarig-engines/metrics/engines/worker-2", "llamarig-work/metrics/work/gpu",
              "llamarig-work/metrics/work/cpu", "temporal/metrics"}
    targets = wait_for(lambda: (t := _targets(stack)) and all(t.get(w) == "up" for w in wanted) and t, 120,
                       "every target up (scraped every 15 s)", interval=1)
    assert set(targets) == wanted | {"llamarig-engines/metrics/engines/embed"}, targets


def test_the_rules_load_and_the_watchdog_reaches_alertmanager(stack):
    groups = stack.get("prometheus", "/api/v1/rules").json()["data"]["groups"]
    rules_file = yaml.safe_load((REPO / "alerts" / "llamarig-rules.yml").read_text())
    assert {g["name"] for g in groups} == {g["name"] for g in rules_file["groups"]}
    # Rules are evaluated every 15 s; a send Alertmanager missed while starting is repeated after
    # Prometheus' resend delay (1 min).
    wait_for(lambda: any(a["labels"]["alertname"] == "Watchdog" for a in stack.get("alertmanager", "/api/v2/alerts")
                         .json()), 180, "Watchdog in Alertmanager", interval=1)


def test_task_metrics_reach_prometheus(stack):
    """The plan's tasks counted by class and outcome, as the alert rules and dashboard read them."""
    def counted():
        r = stack.get("prometheus", "/api/v1/query", params={"query": 'llamarig_tasks_total{outcome="succeeded"}'})
        return {s["metric"]["class"] for s in r.json()["data"]["result"]} >= {"cpu", "script"}
    wait_for(counted, 120, "llamarig_tasks_total scraped for both classes", interval=1)
