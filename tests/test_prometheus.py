"""A real Prometheus scraping a running bundle with llamarig's rules: a model whose server is
killed and whose file is gone goes pending then firing as LlamarigModelDown, and the alert clears
when the model is back. Also: what the dashboard and the rules query exists in /metrics, tokens
are counted, and the engines' own metrics pass through."""
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import free_port, model_entry, wait_for, write_rig
from test_ops_files import RULES, dashboard_metrics

pytestmark = pytest.mark.slow

# Only the wait is shortened so the test takes seconds: the expression is the shipped one, and
# the shipped `for` is covered by promtool's unit tests.
SHORT_FOR = "2s"


def families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def rule_metrics() -> set[str]:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"llamarig_[a-z_]+", e)}


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(api_port: int) -> str:
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == "LlamarigModelDown":
                    rule["for"] = SHORT_FOR
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [{"job_name": "llamarig",
                                "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]}]}))
        port = free_port()
        proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(url + "/-/ready") == 200, 60, "Prometheus ready")
        return url

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(30)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def alert_state(prom: str, name: str) -> str | None:
    alerts = httpx.get(prom + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    found = [a for a in alerts if a["labels"]["alertname"] == name]
    return found[0]["state"] if found else None


def test_model_down_alert_fires_through_prometheus_and_clears(tmp_path, models, bundle_factory, prometheus):
    model = tmp_path / "m.gguf"
    os.link(models["gguf"], model)
    rig = write_rig(tmp_path, {"m": model_entry(model, [0])})
    b = bundle_factory(rig)
    b.wait_ready()
    prom = prometheus(b.rig.api.port)

    def scraped():
        result = httpx.get(prom + "/api/v1/query", params={"query": 'up{job="llamarig"}'}, timeout=5).json()
        return result["data"]["result"] and result["data"]["result"][0]["value"][1] == "1"

    wait_for(scraped, 30, "Prometheus scraping the compute API")
    assert alert_state(prom, "Watchdog") == "firing"
    assert alert_state(prom, "LlamarigModelDown") is None

    # The server dies and its file is gone: the restart's verification refuses it, it stays down.
    away = tmp_path / "m.gguf.away"
    model.rename(away)
    os.kill(b.pid("llama-m"), signal.SIGKILL)
    states = set()

    def firing():
        states.add(alert_state(prom, "LlamarigModelDown"))
        return "firing" in states

    wait_for(firing, 60, "LlamarigModelDown firing", interval=0.2)
    assert "pending" in states, f"never seen pending: {states}"
    alerts = httpx.get(prom + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    down = next(a for a in alerts if a["labels"]["alertname"] == "LlamarigModelDown")
    assert down["labels"]["model"] == "m" and down["labels"]["severity"] == "critical"
    assert down["annotations"]["runbook_url"].endswith("runbooks/LlamarigModelDown.md")
    assert alert_state(prom, "LlamarigModelFileRefused") in ("pending", "firing")

    # The file is back and the operator resets: the model serves and the alert clears.
    away.rename(model)
    assert b.post("/admin/units/m/reset").status_code == 202
    b.wait_state("m", {"ready"}, 60)
    wait_for(lambda: alert_state(prom, "LlamarigModelDown") is None, 30, "LlamarigModelDown cleared")


def test_metrics_cover_the_dashboard_and_rules_count_tokens_and_pass_engine_metrics(one_model):
    b = one_model()
    plain = b.post("/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 7, "ignore_eos": True})
    assert plain.json()["usage"]["completion_tokens"] == 7
    body = {"model": "m", "prompt": "hi", "max_tokens": 12, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", b.api + "/v1/completions", json=body, timeout=60) as r:
        streamed = sum(1 for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]")
    text = b.get("/metrics").text
    # The boot's first events came before the metrics were imported (serve.py); they were held.
    for target in ("verifying", "starting", "ready"):
        assert re.search(rf'^llamarig_model_transitions_total\{{model="m",target="{target}"\}} [1-9]', text, re.M), target
    assert re.search(r'^llamarig_model_loads_total\{model="m"\} 1\.0$', text, re.M)
    counted = float(re.search(r'^llamarig_tokens_generated_total\{model="m"\} (\S+)$', text, re.M).group(1))
    assert counted == 7 + 12, (counted, streamed)  # from the usage the server reports at the end

    present = families(text)
    # llamarig_task*, llamarig_work_process_up, llamarig_plans_ended_by_engine: the workers', at
    # /metrics/work/{gpu,cpu} (tests/test_work.py and test_work_rigs.py check them)
    workers = ("llamarig_task", "llamarig_work_process_up", "llamarig_plans_ended_by_engine")
    missing_dash = {m for m in dashboard_metrics() if m not in present and not m.startswith(workers)}
    missing_rules = {m for m in rule_metrics() if m not in present and not m.startswith(workers)}
    assert not missing_dash, f"the dashboard queries metrics /metrics lacks: {missing_dash}"
    assert not missing_rules, f"the rules query metrics /metrics lacks: {missing_rules}"

    engine = b.get("/metrics/engines/m")
    assert engine.status_code == 200 and "llamacpp:prompt_tokens_total" in engine.text
    unknown = b.get("/metrics/engines/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert Path(b.rig.run_dir / "logs").is_dir()
