"""Per key: the limits checked when a request is admitted (its model list, requests and tokens
per minute, requests at once, a token quota per UTC day or month) and the usage recorded when
it ends (requests, prompt and completion tokens from the engine's own usage, audio seconds,
embedding inputs). Usage goes to Prometheus (labelled by key name: the store's names and the
two of keys from files and the environment, so bounded) and to usage.sqlite every FLUSH_S.

One writer: the event loop. Token limits count what a request used once it ends, so a
request is refused when the key's last minute (or quota period) is already used up, as
OpenAI's and LiteLLM's are."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time

from prometheus_client.core import GaugeMetricFamily
from starlette.responses import Response

from llamarig.api.compute.light_metrics import LightCounter
from llamarig.shared.api_errors import error_response
from llamarig.shared.errors import LlamarigError
from llamarig.shared.keystore import NamedKey
from llamarig.shared.usage_store import FLUSH_S, UsageStore

log = logging.getLogger("llamarig.api")
WINDOW_S = 60.0


class Limited(LlamarigError):
    """A request the key's limits refuse: 429 (403 for a model outside its list)."""

    def __init__(self, status: int, code: str, reason: str, why: str, retry_after: float | None = None):
        super().__init__(code, reason)
        self.status, self.why, self.retry_after = status, why, retry_after

    def response(self) -> Response:
        headers = {"x-should-retry": "false"} if self.retry_after is None else None  # (the openai client reads it)
        retry = math.ceil(self.retry_after) if self.retry_after is not None else None
        return error_response(self.status, self.code, self.reason, "model" if self.why == "model" else None,
                              retry_after=retry, headers=headers)


class _QuotaGauge:
    def __init__(self, ledger: "Ledger"):
        self.ledger = ledger

    def collect(self):
        family = GaugeMetricFamily("llamarig_key_quota_used_ratio", "Share of its token quota each key with one has "
                                   "used this period (UTC day or month), as of its last request.", labels=["key"])
        for name, ratio in self.ledger.quota_used().items():
            family.add_metric([name], ratio)
        yield family

    def describe(self):
        yield GaugeMetricFamily("llamarig_key_quota_used_ratio", "", labels=["key"])


class _Minute:
    """The last minute in whole seconds: 60 counts, nothing made per request (a deque of every
    request's time held thousands of objects for the collector to walk, measured)."""
    __slots__ = ("counts", "second", "total")

    def __init__(self):
        self.counts, self.second, self.total = [0] * 60, 0, 0

    def _move_to(self, second: int) -> None:
        if second - self.second >= 60:
            self.counts, self.total = [0] * 60, 0
        else:
            for s in range(self.second + 1, second + 1):
                self.total -= self.counts[s % 60]
                self.counts[s % 60] = 0
        self.second = second

    def add(self, now: float, n: int) -> None:
        second = int(now)
        if second != self.second:
            self._move_to(second)
        self.counts[second % 60] += n
        self.total += n

    def used(self, now: float) -> int:
        if int(now) != self.second:
            self._move_to(int(now))
        return self.total

    def wait(self, now: float, limit: int) -> float:
        """Seconds until the minute's count falls below `limit`, as its oldest seconds leave."""
        left, second = self.total, int(now)
        for s in range(second - 59, second + 1):
            left -= self.counts[s % 60]
            if left < limit:
                return s + WINDOW_S - now
        return WINDOW_S


class _Account:
    """One key's running numbers."""
    __slots__ = ("requests", "tokens", "inflight", "period", "period_tokens")

    def __init__(self):
        self.requests, self.tokens = _Minute(), _Minute()
        self.inflight = 0
        self.period: str | None = None  # the quota period the count is of: 2026-12-07 or 2026-12
        self.period_tokens = 0


class Ledger:
    def __init__(self, store: UsageStore | None, registry, clock=time.monotonic, wall=time.time):
        self.store, self.clock, self.wall, self.registry = store, clock, wall, registry
        self.accounts: dict[str, _Account] = {}
        self.keys: dict[str, NamedKey] = {}  # the latest seen of each name: the quota gauge reads it
        self.pending: dict[tuple[str, str, str], list[float]] = {}
        self._day_number, self._day = -1, ""
        self.requests = LightCounter("llamarig_key_requests_total", "Requests admitted, by key name and model.",
                                     ["key", "model"], registry)
        self.tokens = LightCounter("llamarig_key_tokens_total", "Tokens by key name, model and kind (prompt, "
                                   "completion), from the engines' own usage.", ["key", "model", "kind"], registry)
        self.audio = LightCounter("llamarig_key_audio_seconds_total", "Seconds of audio transcribed, by key name.",
                                  ["key"], registry)
        self.inputs = LightCounter("llamarig_key_embedding_inputs_total", "Embedding inputs, by key name.",
                                   ["key"], registry)
        self.limited = LightCounter("llamarig_key_limited_total", "Requests refused by a key's limits, by key "
                                    "name and limit (rpm, tpm, concurrent, quota, model).", ["key", "why"], registry)
        registry.register(_QuotaGauge(self))

    def _account(self, key: NamedKey) -> _Account:
        account = self.accounts.get(key.name)
        if account is None:
            account = self.accounts[key.name] = _Account()
        self.keys[key.name] = key
        return account

    # ---- admission ----------------------------------------------------------------------------
    def admit(self, key: NamedKey, model: str) -> None:
        """Raise Limited, or count the request in; its end() must follow."""
        account = self._account(key)
        try:
            if key.models is not None and model not in key.models:
                raise Limited(403, "model_not_allowed", f"the key {key.name!r} may use {', '.join(key.models)}, "
                              f"not {model!r} (its --models list)", "model")
            now = self.clock()
            if key.rpm is not None:
                self._rpm(key, account, now)
            if key.tpm is not None:
                self._tpm(key, account, now)
            if key.concurrent is not None and account.inflight >= key.concurrent:
                raise Limited(429, "rate_limit_exceeded", f"the key {key.name!r} has {account.inflight} requests in "
                              f"progress, its limit (--concurrent {key.concurrent})", "concurrent", 1)
            if key.quota is not None:
                self._quota(key, account)
        except Limited as e:
            self.limited.inc((key.name, e.why))
            raise
        account.inflight += 1
        if key.rpm is not None:
            account.requests.add(now, 1)

    def _rpm(self, key: NamedKey, account: _Account, now: float) -> None:
        if account.requests.used(now) >= key.rpm:
            raise Limited(429, "rate_limit_exceeded", f"the key {key.name!r} is at its limit of {key.rpm} requests "
                          "per minute (--rpm)", "rpm", account.requests.wait(now, key.rpm))

    def _tpm(self, key: NamedKey, account: _Account, now: float) -> None:
        used = account.tokens.used(now)
        if used >= key.tpm:
            raise Limited(429, "rate_limit_exceeded", f"the key {key.name!r} used {used} tokens in the last minute, "
                          f"its limit (--tpm {key.tpm})", "tpm", account.tokens.wait(now, key.tpm))

    def _quota(self, key: NamedKey, account: _Account) -> None:
        period, tokens = key.quota
        current = self._period(period)
        if account.period != current:  # the first request of the period, or since the API started
            account.period = current
            first_day = current if period == "day" else current + "-01"
            account.period_tokens = self.store.tokens_since(key.name, first_day) if self.store else 0
            account.period_tokens += self._pending_tokens(key.name, first_day)
        if account.period_tokens >= tokens:
            raise Limited(429, "insufficient_quota", f"the key {key.name!r} used its quota of {tokens} tokens this "
                          f"{period} (UTC, --quota-tokens {period}:{tokens}); it renews at the next {period}, or "
                          "the operator may add a key", "quota")

    def _period(self, period: str) -> str:
        today = self._today()
        return today if period == "day" else today[:7]

    def _today(self) -> str:
        """The UTC day, made once a day (Unix time has no leap seconds: a day is 86400 of them)."""
        number = int(self.wall() // 86400)
        if number != self._day_number:
            self._day_number = number
            self._day = dt.datetime.fromtimestamp(number * 86400, dt.timezone.utc).strftime("%Y-%m-%d")
        return self._day

    def _pending_tokens(self, name: str, first_day: str) -> int:
        return int(sum(c[2] + c[3] for (day, key, _), c in self.pending.items() if key == name and day >= first_day))

    # ---- the end of a request -----------------------------------------------------------------
    def end(self, key: NamedKey, model: str, status: int, prompt: int = 0, completion: int = 0,
            audio_s: float = 0.0, inputs: int = 0) -> None:
        account = self.accounts[key.name]
        account.inflight -= 1
        tokens = prompt + completion
        if key.tpm is not None and tokens:
            account.tokens.add(self.clock(), tokens)
        if account.period is not None:
            account.period_tokens += tokens
        self.requests.inc((key.name, model))
        if prompt:
            self.tokens.inc((key.name, model, "prompt"), prompt)
        if completion:
            self.tokens.inc((key.name, model, "completion"), completion)
        if audio_s:
            self.audio.inc((key.name,), audio_s)
        if inputs:
            self.inputs.inc((key.name,), inputs)
        day = self._today()
        row = self.pending.get((day, key.name, model))
        if row is None:
            row = self.pending[(day, key.name, model)] = [0, 0, 0, 0, 0.0, 0]
        row[0] += 1
        row[1] += status >= 400
        row[2] += prompt
        row[3] += completion
        row[4] += audio_s
        row[5] += inputs

    # ---- what is read at scrape time and written every FLUSH_S ---------------------------------
    def quota_used(self) -> dict[str, float]:
        """Share of its quota each key with one has used this period (as of its last request)."""
        return {name: self.accounts[name].period_tokens / key.quota[1] for name, key in self.keys.items()
                if key.quota and self.accounts[name].period == self._period(key.quota[0])}

    async def flush_every(self, seconds: float = FLUSH_S) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.flush()

    async def flush(self) -> None:
        if self.store is None or not self.pending:
            return
        deltas, self.pending = self.pending, {}
        try:
            await asyncio.to_thread(self.store.add, deltas)
        except Exception as e:  # a full disk, say: kept for the next flush, and said
            log.error("usage not written: kept for the next flush", extra={"error": f"{type(e).__name__}: {e}"})
            for where, counts in deltas.items():
                row = self.pending.setdefault(where, [0, 0, 0, 0, 0.0, 0])
                for i, v in enumerate(counts):
                    row[i] += v
