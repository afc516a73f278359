"""Proxy overhead: the same requests, interleaved, sent straight to a llama-server, through the
compute API, and through LiteLLM's proxy pointed at the same server (when installed with
bench/setup-litellm.sh). One client process drives all three, so its own cost is the same for each.
The client is aiohttp: with httpx the client itself used a whole core at 64 streams and was the
bottleneck of the compute API's column (measured: the API at 0.24 of a core, the client at 0.97)."""
from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import psutil
import yaml

from common import ROOT, free_port, model_entry, start_bundle, stop, summary_ms, wait_for, write_rig
from models import model
from llamarig.shared.rig import LifecycleConfig
from llamarig.backend.models_make import GgufSize
from llamarig.backend.supervisor_conf import API_PROGRAM

LITELLM = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-llamarig-bench"
CLIENT_KEY, OPERATOR_KEY = "client-key-bench-0123456789", "operator-key-bench-0123456789"  # keys on, as rigs run
ERRORS: dict[str, int] = {}       # failed streams per target in the throughput runs (not counted)
LAST_ERROR: dict[str, str] = {}
ONE_TOKEN = {"model": "m", "prompt": "hi", "max_tokens": 1, "temperature": 0}
STREAM = {"model": "m", "prompt": "hi", "max_tokens": 16, "temperature": 0, "stream": True, "ignore_eos": True}


def _session(target: str, streams: bool, fresh: bool = False) -> aiohttp.ClientSession:
    # The client keeps a connection wherever the server lets it, as an OpenAI client's pool does.
    # llama-server closes its connection after every streamed answer although its headers offer
    # keep-alive (checked with a raw socket), so streams sent to it directly take a new
    # connection each (a pooled one would meet the close); the proxies keep theirs. One-token
    # requests reuse pooled connections everywhere (dropped before llama-server's 5 s idle limit).
    # `fresh`: a new connection per stream for every target, the way every stream to
    # llama-server must go (the comparison of earlier runs).
    connector = (aiohttp.TCPConnector(limit=0, force_close=True) if streams and (fresh or target == "direct") else
                 aiohttp.TCPConnector(limit=0, keepalive_timeout=4))
    return aiohttp.ClientSession(connector=connector, headers=headers_for(target),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def _first_event(client: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with client.post(url, json=STREAM) as r:
        if r.status != 200:
            raise AssertionError(f"{r.status}: {(await r.read())[:300]!r}")
        first = None
        async for chunk in r.content.iter_any():
            if first is None and b"data: " in chunk:
                first = time.perf_counter() - started
        assert r.status == 200 and first is not None, r.status
    return first


async def _one(client: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with client.post(url, json=ONE_TOKEN) as r:
        body = await r.read()
        assert r.status == 200, body[:200]
    return time.perf_counter() - started


async def latencies(urls: dict[str, str], rounds: int, fn) -> dict[str, list[float]]:
    """Each round sends one request to each target, in an order shuffled per round (seeded).
    Not rotated: a rotation keeps each target's predecessor, and what ran just before a request
    shows in its time (a bare proxy measured right after every LiteLLM request came out slower
    than the compute API in every run of session 4)."""
    names = list(urls)
    out = {n: [] for n in names}
    clients = {n: _session(n, fn is _first_event) for n in names}
    order = random.Random(5)
    try:
        for n in names:  # open each connection before measuring
            await fn(clients[n], urls[n])
        for _ in range(rounds):
            for n in order.sample(names, len(names)):
                out[n].append(await fn(clients[n], urls[n]))
    finally:
        for c in clients.values():
            await c.close()
    return out


KEY_OF = {"litellm": LITELLM_KEY, "compute_api": CLIENT_KEY}  # target -> the bearer key its requests carry


def headers_for(target: str) -> dict:
    key = KEY_OF.get(target)
    return {"Authorization": f"Bearer {key}"} if key else {}


# The lifecycle fields the tests' rig sets, at the shipped defaults (fields every release has,
# so a rig of an older tree, bench/cpu_pairs.py --before, takes them too).
SHIPPED_HEALTH = {k: LifecycleConfig.model_fields[k].default for k in (
    "health_interval_s", "probe_timeout_s", "failure_threshold", "backoff_initial_s", "backoff_max_s", "vram_settle_s")}


def start_keyed(folder: Path, entry: dict):
    """The compute API with a client key and the operator key, as a rig beyond loopback runs,
    with the shipped health settings: the tests' rig probes every 0.5 s, four times as often
    (idle, the API used 7.3 ms of CPU a second with it and 4.0 with the shipped ones, measured)."""
    return start_bundle(folder, write_rig(folder, {"m": entry}, lifecycle=SHIPPED_HEALTH),
                        env={"LLAMARIG_CLIENT_KEYS": CLIENT_KEY, "LLAMARIG_OPERATOR_KEY": OPERATOR_KEY},
                        key=OPERATOR_KEY)


async def _rate(target: str, url: str, concurrency: int, seconds: float, fresh: bool) -> float:
    async with _session(target, streams=True, fresh=fresh) as client:
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker():
            nonlocal done
            while time.perf_counter() < deadline:
                try:
                    await _first_event(client, url)
                except (aiohttp.ClientError, AssertionError) as e:
                    ERRORS[target] = ERRORS.get(target, 0) + 1
                    LAST_ERROR[target] = f"{type(e).__name__}: {e}"[:200]
                    continue
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


async def throughput(urls: dict[str, str], concurrency: int, seconds: float, reps: int,
                     fresh: bool = False) -> dict[str, list[float]]:
    """Streams per second of each target, `reps` blocks of `seconds` each. Every rep runs each
    target once, in an order shuffled per rep (seeded), so a target's blocks pair with direct's
    of the same rep: on the lent GPU host two blocks of 4 s in a row measured 353 and 209
    streams/s for the same target, far more than the difference under test."""
    order = random.Random(concurrency)
    rates = {n: [] for n in urls}
    for _ in range(reps):
        for n in order.sample(list(urls), len(urls)):
            rates[n].append(await _rate(n, urls[n], concurrency, seconds, fresh))
    return rates


def median_rates(rates: dict[str, list[float]]) -> dict[str, float]:
    return {n: round(statistics.median(r), 2) for n, r in rates.items()}


def share_of_direct(rates: dict[str, list[float]], target: str) -> float:
    """The median over reps of the target's rate over direct's in the same rep."""
    return round(statistics.median(t / d for t, d in zip(rates[target], rates["direct"]) if d), 3)


def start_litellm(folder: Path, server_port: int) -> tuple[subprocess.Popen | None, str | None]:
    if not LITELLM.exists():
        return None, None
    port = free_port()
    config = folder / "litellm.yaml"
    # LiteLLM refuses to start without a master key; clients then send it (its auth check is
    # part of what it costs, as the compute API's would be with api.keys set).
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/m", "api_base": f"http://127.0.0.1:{server_port}/v1", "api_key": "none"}}],
        "general_settings": {"master_key": LITELLM_KEY}}))
    proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], stdout=open(folder / "litellm.log", "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited ({proc.returncode}); see {folder / 'litellm.log'}")
        try:
            return httpx.get(url + "/health/liveliness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(ready, 120, "LiteLLM proxy ready", 0.5)
    return proc, url


def start_bare(folder: Path, server_port: int) -> dict[str, tuple[subprocess.Popen, str]]:
    """The bare proxies of bare_proxy.py, one per client, each answering on its own port."""
    started = {}
    for client in ("upstream", "aiohttp"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(server_port), str(port),
                                 client], stdout=open(folder / f"bare-{client}.log", "w"), stderr=subprocess.STDOUT)
        started[f"bare_uvicorn_{client}"] = (proc, f"http://127.0.0.1:{port}/v1/completions")

    def answering():
        for name, (proc, url) in started.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}); see {folder}")
            try:
                if httpx.post(url, json=ONE_TOKEN, timeout=5).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True
    wait_for(answering, 60, "the bare proxies answering", 0.2)
    return started


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each target's process and its children have used so far."""
    out = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        out[name] = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
    return out


def cpu_per_request_us(pids: dict[str, int], urls: dict[str, str], rounds: int) -> tuple[dict, dict]:
    """The 1-token latencies (interleaved) and the CPU per request (µs) of the proxies in `pids`
    (each serves only its own target's requests): less moved by the VM's wake-up latency than the
    latencies are, though not by what else runs on the same cores."""
    before = _cpu_s(pids)
    lat = asyncio.run(latencies(urls, rounds, _one))
    after = _cpu_s(pids)
    sent = rounds + 1  # latencies() opens each connection with one request first
    return lat, {n: round((after[n] - before[n]) / sent * 1e6) for n in pids}


def overhead(stats: dict, base: str = "direct") -> dict:
    out = {}
    for name, s in stats.items():
        if name != base:
            out[name] = {k: round(s[k] - stats[base][k], 3) for k in ("p50_ms", "p90_ms", "p99_ms")}
    return out


def run(smoke: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-bench-proxy-"))
    path = model("tiny", GgufSize())
    entry = model_entry(path, [0], parallel=64, context_size=64 * 64)
    b = start_keyed(folder, entry)
    litellm, bare = None, {}
    try:
        b.wait_ready(120)
        urls = {"direct": f"http://127.0.0.1:{entry['port']}/v1/completions",
                "compute_api": f"{b.api}/v1/completions"}
        litellm, base = start_litellm(folder, entry["port"])
        if base:
            urls["litellm"] = base + "/v1/completions"
        rounds, seconds, reps = (20, 0.5, 1) if smoke else (600, 2.0, 8)
        bare = start_bare(folder, entry["port"])
        api_pid = b.pid(API_PROGRAM)
        # Pass 1, for the targets: direct, the compute API and the bare proxies. LiteLLM is kept
        # out of it: one of its requests costs about 18 ms of CPU on the same two cores, and with
        # its requests between theirs the compute API used 0.72 to 0.80 ms of CPU per request
        # instead of 0.42 to 0.45, and added 0.51 to 0.58 ms at p50 instead of 0.41 (measured):
        # LiteLLM's cost, shown in another column.
        near = {"direct": urls["direct"], "compute_api": urls["compute_api"], **{n: u for n, (_, u) in bare.items()}}
        lat, cpu = cpu_per_request_us({"compute_api": api_pid, **{n: p.pid for n, (p, _) in bare.items()}},
                                      near, rounds)
        one = {n: summary_ms(lat[n]) for n in near}
        # Pass 2: the three targets of the comparison, interleaved (LiteLLM, when installed).
        three, cpu3 = {}, {}
        if base:
            lat3, cpu3 = cpu_per_request_us({"compute_api": api_pid, "litellm": litellm.pid}, urls, rounds)
            three = {n: summary_ms(v) for n, v in lat3.items()}
        # Time to first token in the same two passes (the bare proxies do not stream).
        pair = {n: urls[n] for n in ("direct", "compute_api")}
        ttft = {n: summary_ms(v) for n, v in asyncio.run(latencies(pair, rounds, _first_event)).items()}
        ttft3 = {n: summary_ms(v) for n, v in asyncio.run(latencies(urls, rounds, _first_event)).items()} if base else {}
        rates = {c: asyncio.run(throughput(urls, c, seconds, reps)) for c in (1, 16, 64)}
        fresh64 = asyncio.run(throughput(urls, 64, seconds, reps, fresh=True))
        shares = {str(c): {n: share_of_direct(r, n) for n in r if n != "direct"} for c, r in rates.items()}
        return {"targets": list(urls), "litellm": "measured" if base else "skipped: run bench/setup-litellm.sh",
                "one_token": one, "one_token_overhead_ms": overhead(one), "cpu_us_per_request": cpu,
                "one_token_with_litellm": three, "with_litellm_overhead_ms": overhead(three) if three else {},
                "cpu_us_per_request_with_litellm": cpu3,
                "ttft_stream": ttft, "ttft_overhead_ms": overhead(ttft),
                "ttft_stream_with_litellm": ttft3, "ttft_with_litellm_overhead_ms": overhead(ttft3) if ttft3 else {},
                "streams_per_s": {str(c): median_rates(r) for c, r in rates.items()},
                "streams_per_s_each_rep": {str(c): r for c, r in rates.items()},
                "share_of_direct": shares,
                "throughput_errors": dict(ERRORS), "throughput_last_error": dict(LAST_ERROR),
                "compute_api_share_of_direct_at_64": shares["64"]["compute_api"],
                "streams_per_s_64_new_connection_each": median_rates(fresh64),
                "share_at_64_new_connection_each": share_of_direct(fresh64, "compute_api"),
                "targets_goal": "compute API: < 0.5 ms added at p50, < 2 ms at p99, >= 95 % of direct at 64"}
    finally:
        for proc in [litellm] + [p for p, _ in bare.values()]:
            if proc:
                proc.terminate()
                proc.wait(30)
        stop(b)
