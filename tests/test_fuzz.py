"""schemathesis over every route of the spec, on a live bundle with both engines, Whisper and
an embeddings model: no 5xx but a 503 with Retry-After, no hang, and the bundle still ready.
The routes that stop the bundle are left out. Bounded examples per route (FUZZ_EXAMPLES)."""
from __future__ import annotations

import os

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase

from helpers import free_port, model_entry, running_bundle, write_rig

pytestmark = pytest.mark.slow
OPERATOR = "operator-key-for-fuzzing-0123"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
STOPS = {("POST", "/admin/down")}
UNIT_ACTION = ("POST", "/admin/units/{name}/{action}")  # fuzzed, but never with action "stop"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("fuzz")
    rig = write_rig(folder, {
        "native": model_entry(models["gguf"], [0], priority=0),
        "python": model_entry(models["gguf_b"], [1], engine="llama-cpp-python"),
        "embed": model_entry(models["gguf"], [2], embeddings=True),
    }, whisper={"model_dir": str(models["whisper"]), "gpu": 3, "port": free_port(), "max_new_tokens": 4})
    env = {"LLAMARIG_OPERATOR_KEY": OPERATOR, "LLAMARIG_CLIENT_KEYS": "client-key-for-fuzzing-0123"}
    with running_bundle(folder, rig, env=env, key=OPERATOR) as b:
        yield b


def _acceptable(response) -> bool:
    if response.status_code == 503:
        return "Retry-After" in response.headers
    return response.status_code < 500


@pytest.mark.parametrize("model", ["native", "python"])
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
])
def test_a_null_penalty_is_a_400_on_both_engines(fuzzed, model, path, body):
    # llama-cpp-python hands a null penalty to a C call that fails; the fuzzer found it as a 500.
    payload = {**body, "model": model, "max_tokens": 2, "frequency_penalty": None, "presence_penalty": None}
    response = fuzzed.post(path, json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] in ("frequency_penalty", "presence_penalty")


def test_no_route_answers_5xx_to_generated_requests(fuzzed):
    spec = fuzzed.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in STOPS:
            continue

        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @hypothesis.given(case=operation.as_strategy())
        def call(case):
            nonlocal calls
            action = (case.path_parameters or {}).get("action")
            if (case.method.upper(), operation.path) == UNIT_ACTION and action == "stop":
                return
            calls += 1
            # A hang fails the call by its timeout: max_tokens is bounded by the models' context.
            response = case.call(base_url=fuzzed.api, headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=60)
            if not _acceptable(response):
                failures.append((operation.label, response.status_code, response.text[:300], case.body))

        call()
    assert failures == [], failures[:5]
    assert calls >= EXAMPLES * 5
    fuzzed.wait_ready(60)  # a fuzzed reset or reload may have restarted a model: it comes back
    gaps = [line for line in fuzzed.get("/metrics").text.splitlines() if line.startswith("llamarig_validator_gaps")]
    assert all(line.endswith(" 0.0") for line in gaps if not line.startswith("#")), gaps
