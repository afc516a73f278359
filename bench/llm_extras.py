"""What issue 33's llm-task extras add, each beside its floor in the same run:

- samples: SampleLog.write (redaction, a lock, rotation's size check, one append) per llm
  attempt, at three prompt sizes; floor: json.dumps of the same record and an append, no
  redaction, no lock. Target: at most 1 ms added to an llm task.
- escalation: Tier.ask against a stand-in that answers at once (the budget's hold and settle,
  redaction of the rig's keys, pacing, parsing), interleaved with a bare httpx POST of the same
  body to the same stand-in: the difference is what escalation adds besides the call itself.

    python bench/llm_extras.py [ROUNDS]
"""
from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the stand-in is the tests'

from llamarig.shared.external_config import ExternalTier  # noqa: E402
from llamarig.shared.redact import Redactor  # noqa: E402
from llamarig.work import external_budget, samples  # noqa: E402
from llamarig.work.external import Tier  # noqa: E402
from tier_standin import ANSWER, StandIn  # noqa: E402

RIG_KEYS = ["client-key-of-this-rig-0123456789", "operator-key-abcdefghijklmnop"]
WORDS = "The quarterly report lists revenue, costs and margins: each region's, then the whole firm's. "
SECRET = " Someone pasted password=hunter22 and Bearer abcdefgh12345678 here. "


def _record(chars: int) -> dict:
    """Prose of `chars` characters with one pasted secret per 4,000 characters."""
    prose = (WORDS * (chars // len(WORDS) + 1))[:chars]
    text = SECRET.join(prose[i:i + 4000] for i in range(0, len(prose), 4000))
    return {"task_id": "plan-20261207-000000-abcdef/summary", "attempt": 1, "submitter": "alice", "model": "worker-1",
            "messages": [{"role": "system", "content": "You are a careful assistant working on a task."},
                         {"role": "user", "content": "Summarise.\n\n" + text}],
            "response": "A summary of the report in five lines. " * 8, "tokens": {"prompt": chars // 4, "completion": 80},
            "duration_ms": 2300, "outcome": "succeeded"}


def _ms(samples_s: list[float]) -> dict:
    ordered = sorted(samples_s)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 4),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 4),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 4)}


def sample_log(rounds: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        log = samples.SampleLog(Path(folder) / "s", 256 * 2**20, Redactor(RIG_KEYS))
        floor_file = Path(folder) / "floor.jsonl"
        for chars in (2_000, 16_000, 256_000):
            record, ours, floor = _record(chars), [], []
            for _ in range(rounds if chars < 100_000 else max(20, rounds // 10)):
                began = time.perf_counter()
                log.write(record)
                ours.append(time.perf_counter() - began)
                began = time.perf_counter()
                with open(floor_file, "a") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                floor.append(time.perf_counter() - began)
            out[f"{chars // 1000}k_chars"] = {"sample_log": _ms(ours), "floor": _ms(floor),
                                              "added_p50_ms": round((statistics.median(ours) - statistics.median(floor))
                                                                    * 1000, 4)}
    return out


async def escalation(rounds: int) -> dict:
    with StandIn([ANSWER]) as s, tempfile.TemporaryDirectory() as folder:
        config = ExternalTier(base_url=s.url, model="big", price_in_per_1k=0.5, price_out_per_1k=1.5,
                              daily_budget=1e6, rpm=100_000)
        tier = Tier(config, lambda: "tier-key", external_budget.Budget(Path(folder) / "b.json", 1e6, 600), RIG_KEYS)
        messages = _record(2_000)["messages"]
        body = {"model": "big", "messages": messages, "max_tokens": 100, "temperature": 0.0}
        bare = httpx.AsyncClient(headers={"Authorization": "Bearer tier-key"}, timeout=10)
        ours, floor = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            await tier.ask(messages, 100, 0.0)
            ours.append(time.perf_counter() - began)
            began = time.perf_counter()
            (await bare.post(s.url + "/chat/completions", json=body)).json()
            floor.append(time.perf_counter() - began)
        await tier.close()
        await bare.aclose()
    return {"tier_ask": _ms(ours), "bare_post": _ms(floor),
            "added_p50_ms": round((statistics.median(ours) - statistics.median(floor)) * 1000, 4)}


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    print(json.dumps({"rounds": rounds, "samples": sample_log(rounds),
                      "escalation": asyncio.run(escalation(rounds))}, indent=2))
