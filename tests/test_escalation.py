"""The escalation tier's client on its own, against a stand-in that answers 429, 500, 400, or
hangs: retries with backoff, bounded timeouts, a budget that refuses uncalled, costs, and never
the rig's keys in a request."""
from __future__ import annotations

import asyncio
import time

import pytest

from llamarig.shared.external_config import ExternalTier
from llamarig.work import external_budget
from llamarig.work.external import Tier, TierError
from tier_standin import ANSWER, StandIn

RIG_KEY = "rig-client-key-0123456789abcdef"
TIER_KEY = "tier-key-of-the-outside-endpoint"
ASK = [{"role": "user", "content": f"Summarise. (the rig key {RIG_KEY} leaked into the task)"}]


def tier(tmp_path, url: str, **over) -> Tier:
    config = ExternalTier(**{"base_url": url, "model": "big", "price_in_per_1k": 0.5, "price_out_per_1k": 1.5,
                             "daily_budget": 10, "retries": 2, "retry_initial_s": 0.05, "timeout_s": 2} | over)
    budget = external_budget.Budget(tmp_path / "budget.json", config.daily_budget, 600)
    return Tier(config, lambda: TIER_KEY, budget, [RIG_KEY])


async def asked(t: Tier, max_tokens: int = 100):
    try:
        return await t.ask(ASK, max_tokens, 0.0)
    finally:
        await t.close()


def test_an_answer_is_costed_and_carries_the_tier_key_never_the_rigs(tmp_path):
    with StandIn([ANSWER]) as s:
        t = tier(tmp_path, s.url)
        advice = asyncio.run(asked(t))
    assert (advice.text, advice.tokens_in, advice.tokens_out, advice.calls) == ("advice", 1000, 500, 1)
    assert advice.cost == pytest.approx(1000 * 0.5 / 1000 + 500 * 1.5 / 1000) and not advice.estimated
    (request,) = s.requests
    assert request["path"] == "/v1/chat/completions" and request["headers"]["Authorization"] == f"Bearer {TIER_KEY}"
    assert RIG_KEY not in str(request) and "[REDACTED:rig-key]" in request["body"]["messages"][0]["content"]
    assert request["body"]["model"] == "big"
    assert t.budget.left() == (pytest.approx(1.25), pytest.approx(8.75))


def test_429_and_500_are_called_again_with_backoff_then_answered(tmp_path):
    with StandIn([429, 500, ANSWER]) as s:
        advice = asyncio.run(asked(tier(tmp_path, s.url)))
    assert advice.calls == 3 and len(s.requests) == 3


def test_a_hang_is_bounded_by_the_timeout_and_fails_retryable_after_the_retries(tmp_path):
    with StandIn(["hang"]) as s:
        began = time.monotonic()
        with pytest.raises(TierError) as e:
            asyncio.run(asked(tier(tmp_path, s.url, timeout_s=0.5, retries=1)))
        took = time.monotonic() - began
    assert e.value.code == "external_unavailable" and not e.value.final and "ReadTimeout" in e.value.reason
    assert len(s.requests) == 2 and took < 5
    assert tier(tmp_path, s.url).budget.left() == (0, 10)  # the hold was given back: nothing was spent


def test_a_4xx_is_refused_at_once_not_called_again(tmp_path):
    with StandIn([400]) as s:
        with pytest.raises(TierError) as e:
            asyncio.run(asked(tier(tmp_path, s.url)))
    assert (e.value.code, e.value.final, len(s.requests)) == ("external_refused", True, 1)


def test_an_exhausted_budget_fails_without_calling(tmp_path):
    with StandIn([ANSWER]) as s:
        t = tier(tmp_path, s.url, daily_budget=1.5)
        asyncio.run(asked(t))  # costs 1.25 of 1.5
        with pytest.raises(TierError) as e:
            asyncio.run(asked(tier(tmp_path, s.url, daily_budget=1.5), max_tokens=200))  # may cost 0.3 and more
    assert (e.value.code, e.value.final) == ("budget_exhausted", True) and "0.2500 left" in e.value.reason
    assert len(s.requests) == 1


def test_holds_of_calls_at_once_never_pass_the_budget_together(tmp_path):
    budget = external_budget.Budget(tmp_path / "b.json", 1.0, 600)
    holds = [budget.hold(0.3) for _ in range(5)]
    assert sum(h is not None for h in holds) == 3
    budget.settle(holds[0], 0.1)
    assert budget.left() == (pytest.approx(0.1), pytest.approx(0.3))
    assert external_budget.Budget(tmp_path / "b.json", 1.0, 0).left()[1] == pytest.approx(0.9)  # lapsed holds


def test_a_missing_key_fails_the_call_not_the_worker(tmp_path, monkeypatch):
    from types import SimpleNamespace
    monkeypatch.delenv("TIER_KEY_VAR", raising=False)
    config = ExternalTier(base_url="http://127.0.0.1:9/v1", model="x", key_env="TIER_KEY_VAR")
    rig = SimpleNamespace(work=SimpleNamespace(external=config), run_dir=tmp_path)
    t = Tier.of(rig, [])
    with pytest.raises(TierError) as e:
        asyncio.run(asked(t))
    assert e.value.code == "external_key_missing" and "TIER_KEY_VAR" in e.value.reason


# ---- on a real bundle: the tier is a second real llama-server ------------------------------------
OPERATOR = "operator-key-for-escalation-0123"
CLIENT = "client-key-for-escalation-45678"


@pytest.mark.slow
def test_llm_tasks_escalate_to_a_real_tier_and_each_call_is_costed_everywhere(tmp_path, models):
    from helpers import (fake_server, free_port, llama_server, llamarig, model_entry, plan_ended, running_bundle,
                         work_section, write_rig)
    (tmp_path / "tier.key").write_text(TIER_KEY + "\n")
    with llama_server(models["gguf_b"], tmp_path, "--api-key", TIER_KEY, context=4096) as tier_url:
        # The local model answers /health but fails every completion: its attempts fail, retryable.
        entry = model_entry(models["gguf"], [0], extra_args=["--fake-mode", "cannot-generate"])
        work = work_section(metrics_port_cpu=free_port(), external={
            "base_url": tier_url + "/v1", "model": "tier-model", "key_file": str(tmp_path / "tier.key"),
            "price_in_per_1k": 0.5, "price_out_per_1k": 2, "daily_budget": 50, "retries": 1})
        rig = write_rig(tmp_path, {"m": entry}, engines={"llama_server": fake_server(tmp_path)}, work=work)
        env = {"LLAMARIG_OPERATOR_KEY": OPERATOR, "LLAMARIG_CLIENT_KEYS": CLIENT}
        with running_bundle(tmp_path, rig, env=env, key=OPERATOR) as b:
            gen = {"prompt": "Say hi.", "model": "m", "max_tokens": 6}
            r = b.post("/admin/plans", json={"plan": {"name": "esc", "tasks": [
                {"name": "outside", "class": "llm", "external": True, "generate": gen},
                {"name": "late", "class": "llm", "escalate": {"after_failures": 1}, "retries": 2, "generate": gen},
                # May cost 60 (30,000 tokens out at 2 per 1,000): past the day's 50, so never called.
                {"name": "dear", "class": "llm", "external": True, "depends_on": ["outside", "late"],
                 "generate": gen | {"max_tokens": 30000}}]}})
            assert r.status_code == 201, r.text
            view = plan_ended(b, r.json()["plan_id"], timeout=120)
            metrics = b.get("/metrics/work/cpu").text  # (an attempt that asks the tier runs on work-cpu)
            usage = llamarig(rig, "usage", "--by", "model", "--json")
    outside, late, dear = view["tasks"]["outside"], view["tasks"]["late"], view["tasks"]["dear"]
    assert dear["state"] == "failed" and "budget_exhausted" in dear["error"] and dear["attempt"] == 1, dear
    assert (outside["state"], late["state"]) == ("succeeded", "succeeded"), (outside, late)
    assert outside["result"]["attempt"] == 1 and late["result"]["attempt"] == 2
    for t in (outside, late):
        x = t["result"]["external"]
        assert t["result"]["model"] == "external:tier-model" and x["calls"] == 1 and not x["estimated"]
        assert x["tokens_out"] >= 1 and x["cost"] == pytest.approx((x["tokens_in"] * 0.5 + x["tokens_out"] * 2) / 1000)
    # The hand-off: the task and the local attempt's error, as data.
    sent = (tmp_path / late["result"]["folder"] / "messages.json").read_text()
    assert "local_attempts" in sent and "attempt 1:" in sent and "500" in sent
    total = view["external"]
    assert total["calls"] == 2 and total["cost"] == pytest.approx(outside["result"]["external"]["cost"] +
                                                                 late["result"]["external"]["cost"])
    assert 'llamarig_external_calls_total{outcome="succeeded"' in metrics and "llamarig_external_spent_today" in metrics
    assert 'llamarig_external_calls_total{outcome="budget_exhausted"' in metrics
    rows = {r["model"]: r for r in __import__("json").loads(usage.stdout)}
    assert rows["external:tier-model"]["requests"] == 2
    assert rows["external:tier-model"]["external_cost"] == pytest.approx(total["cost"])
