"""The escalation tier (work.external): an OpenAI-compatible endpoint outside the rig, asked by
the worker's escalation path only. Each call holds its worst case in the day's budget first
(external_budget.py) and is refused uncalled where that does not fit; calls are paced to the
tier's rpm; a 429, a 5xx, a timeout or a lost connection is called again with backoff, up to
`retries`. The request carries the tier's own key and text with the rig's keys taken out."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from typing import NamedTuple

import httpx

from llamarig.shared.errors import LlamarigError
from llamarig.shared.external_config import ExternalTier
from llamarig.shared.redact import Redactor
from llamarig.work import external_budget
from llamarig.work.external_budget import Budget

CHARS_PER_TOKEN_WORST = 2  # a prompt's tokens, counted high for the budget's hold


class TierError(LlamarigError):
    """The tier gave no answer: code budget_exhausted, external_refused (a 4xx: asking again fails
    the same way) or external_unavailable (429, 5xx, timeouts, past the retries)."""

    def __init__(self, code: str, reason: str, final: bool):
        super().__init__(code, reason)
        self.final = final


class Advice(NamedTuple):
    text: str
    tokens_in: int
    tokens_out: int
    cost: float
    calls: int
    estimated: bool  # the endpoint gave no usage: tokens counted from the text


class Tier:
    def __init__(self, config: ExternalTier, key, budget: Budget, rig_keys: list[str]):
        """key: reads the tier's key (None: it takes none), at the first call: a missing key fails
        the tasks that ask the tier, not the worker."""
        self.config, self.budget, self.key = config, budget, key
        self.http = httpx.AsyncClient(timeout=config.timeout_s)
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.scrub = Redactor(rig_keys)  # (the rig's keys only: the rest of the task is the task)
        self.sent: deque[float] = deque()  # times of the last minute's calls

    @classmethod
    def of(cls, rig, rig_keys: list[str], processes: int = 1) -> Tier | None:
        """processes: the work-cpu processes that share the tier's rpm (each paces to its part)."""
        c = rig.work.external
        if c is None:
            return None
        if processes > 1:
            c = c.model_copy(update={"rpm": max(1, c.rpm // processes)})
        lapse = c.timeout_s * (c.retries + 1) + c.retry_initial_s * 2 ** c.retries + 60
        return cls(c, lambda: tier_key(rig, c), Budget(external_budget.path(rig.run_dir), c.daily_budget, lapse),
                   rig_keys)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.config.price_in_per_1k + tokens_out * self.config.price_out_per_1k) / 1000

    async def ask(self, messages: list[dict], max_tokens: int, temperature: float) -> Advice:
        if callable(self.key):
            try:
                key = self.key()
            except LlamarigError as e:
                raise TierError(e.code, e.reason, final=True) from None
            self.key = None
            self.http.headers.update({"Authorization": f"Bearer {key}"} if key else {})
        body = {"model": self.config.model, "messages": self.scrub.tree(messages), "max_tokens": max_tokens,
                "temperature": temperature}
        worst = self.cost(len(json.dumps(body["messages"])) // CHARS_PER_TOKEN_WORST + 1, max_tokens)
        hold = self.budget.hold(worst)
        if hold is None:
            spent, left = self.budget.left()
            raise TierError("budget_exhausted", f"the escalation tier's daily budget ({self.config.daily_budget:g} "
                            f"{self.config.currency}) has {left:.4f} left, and this call may cost {worst:.4f}: not "
                            "called (work.external.daily_budget; the day is UTC)", final=True)
        cost = 0.0
        try:
            answer, calls = await self._called(body)
            advice = _advice(answer, calls, body["messages"], self.cost)
            cost = advice.cost
            return advice
        finally:
            self.budget.settle(hold, cost)

    async def _called(self, body: dict) -> tuple[dict, int]:
        c, why = self.config, ""
        for call in range(1, c.retries + 2):
            await self._paced()
            try:
                r = await self.http.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                why, wait = f"{type(e).__name__}: {e}"[:300] or type(e).__name__, None
            else:
                if r.status_code == 200:
                    return _json(r), call
                why = f"{r.status_code}: {r.text[:300]}"
                if r.status_code != 429 and r.status_code < 500:
                    raise TierError("external_refused", f"the escalation tier refused the request ({why})", True)
                wait = _retry_after(r, c.timeout_s)
            if call <= c.retries:
                await asyncio.sleep(wait if wait is not None else min(c.retry_initial_s * 2 ** (call - 1), 30))
        raise TierError("external_unavailable", f"the escalation tier gave no answer in {c.retries + 1} calls; "
                        f"the last: {why}", final=False)

    async def _paced(self) -> None:
        """At most rpm calls in any minute: wait for the oldest of the last minute's to age out."""
        while True:
            now = time.monotonic()
            while self.sent and now - self.sent[0] >= 60:
                self.sent.popleft()
            if len(self.sent) < self.config.rpm:
                self.sent.append(now)
                return
            await asyncio.sleep(60 - (now - self.sent[0]))

    async def close(self) -> None:
        await self.http.aclose()


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
        body["choices"][0]["message"]
        return body
    except (ValueError, KeyError, IndexError, TypeError):
        raise TierError("external_refused", f"the escalation tier answered 200 without a chat completion: "
                        f"{r.text[:200]}", True) from None


def _advice(answer: dict, calls: int, sent: list[dict], price) -> Advice:
    text = answer["choices"][0]["message"].get("content") or ""
    usage = answer.get("usage") or {}
    tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    estimated = not isinstance(tokens_in, int) or not isinstance(tokens_out, int)
    if estimated:  # (about 4 characters a token in English)
        tokens_in, tokens_out = len(json.dumps(sent)) // 4 + 1, len(text) // 4 + 1
    return Advice(text, tokens_in, tokens_out, price(tokens_in, tokens_out), calls, estimated)


def _retry_after(r: httpx.Response, cap: float) -> float | None:
    try:
        return min(max(float(r.headers.get("retry-after", "")), 0.0), cap)
    except ValueError:
        return None


def tier_key(rig, c: ExternalTier) -> str | None:
    """The tier's key from its file or variable; a missing one is an error, never no key."""
    if c.key_file:
        try:
            return rig.resolve(c.key_file).read_text().strip()
        except OSError as e:
            raise LlamarigError("external_key_unreadable", f"work.external.key_file: {e.strerror}") from None
    if c.key_env:
        if not os.environ.get(c.key_env):
            raise LlamarigError("external_key_missing", f"work.external.key_env: {c.key_env} is not set in "
                                "work-gpu's environment")
        return os.environ[c.key_env]
    return None
