"""CPU per 1-token request of the compute API (keys on) against the bare proxy, measured in
several interleaved passes of many requests each (a pass of 300 reads to one clock tick in 8 %):
the ratio of each pass and their median.

--before REF: a second compute API runs the code of git REF (its src/ through PYTHONPATH) with
the same keys from the environment, beside this tree's, whose requests then carry a named key
with every limit set (rpm, tpm, concurrent, a quota; --env-key: the environment's key): what
keys, usage and limits add, before and after in one run.

--pin: the proxies (the compute APIs and the bare proxy, every thread) run on CPU 0 only, the
client and the llama-servers on CPU 1 only: each proxy's caches are no longer shared with the
client's and the server's work (a 2-core stand-in for a machine with cores to spare).

    python bench/cpu_pairs.py [PASSES [REQUESTS]] [--before REF] [--pin]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import proxy
from common import ROOT, start_bundle, stop
from models import model
from proxy import cpu_per_request_us, model_entry, overhead, start_bare, start_keyed, summary_ms
from llamarig.backend.models_make import GgufSize
from llamarig.backend.supervisor_conf import API_PROGRAM, model_program
from llamarig.shared.keystore import KeyStore, NamedKey
from llamarig.shared.rig import load_rig

LIMITS = NamedKey("bench", "client", rpm=10**9, tpm=10**12, concurrent=10**6, quota=("month", 10**15))


def _code_of(ref: str, folder: Path) -> Path:
    """A folder whose `llamarig` is src/ as of git REF."""
    tree = folder / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (folder / "pkg").mkdir()
    (folder / "pkg" / "llamarig").symlink_to(tree / "src")
    return folder / "pkg"


def _bundles(folder: Path, before: str | None, named: bool = True, code: Path | None = None) -> dict:
    """name -> (bundle, url) of each compute API; the second runs `code` (a folder holding a
    `llamarig`) if given, else git REF `before`'s src/."""
    entry = model_entry(model("tiny", GgufSize()), [0], parallel=64, context_size=64 * 64)
    (folder / "now").mkdir()
    b = start_keyed(folder / "now", entry)
    out = {"compute_api": (b, f"{b.api}/v1/completions")}
    if before:
        if named:
            proxy.KEY_OF["compute_api"] = KeyStore(load_rig(b.rig_path).run_dir).add(LIMITS)
        proxy.KEY_OF["compute_api_before"] = proxy.CLIENT_KEY
        old = folder / "before"
        old.mkdir()
        other = model_entry(model("tiny", GgufSize()), [1], parallel=64, context_size=64 * 64)
        rig = proxy.write_rig(old, {"m": other}, lifecycle=proxy.SHIPPED_HEALTH)
        env = {"LLAMARIG_CLIENT_KEYS": proxy.CLIENT_KEY, "LLAMARIG_OPERATOR_KEY": proxy.OPERATOR_KEY,
               "PYTHONPATH": str(code or _code_of(before, old))}
        a = start_bundle(old, rig, env=env, key=proxy.OPERATOR_KEY)
        out["compute_api_before"] = (a, f"{a.api}/v1/completions")
    return out


def _pin(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def pin_apart(proxies: list[int], servers: list[int]) -> None:
    """The proxies on CPU 0; this process (the client) and the llama-servers on CPU 1."""
    for pid in proxies:
        _pin(pid, {0})
    for pid in [os.getpid(), *servers]:
        _pin(pid, {1})
    print(f"pinned: proxies {proxies} on CPU 0; the client and llama-servers {servers} on CPU 1")


def main(passes: int, requests: int, before: str | None, named: bool = True, code: Path | None = None,
         pin: bool = False) -> dict:
    """Each compute API's medians: name -> (CPU x the bare proxy's, p50 ms over it)."""
    folder = Path(tempfile.mkdtemp(prefix="llamarig-cpu-pairs-"))
    apis, bare = {}, {}
    try:
        apis = _bundles(folder, before, named, code)
        for b, _ in apis.values():
            b.wait_ready(120)
        bare = start_bare(folder, apis["compute_api"][0].rig.models["m"].port)
        urls = {"direct": f"http://127.0.0.1:{apis['compute_api'][0].rig.models['m'].port}/v1/completions",
                **{n: u for n, (_, u) in apis.items()}, "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][1]}
        pids = {**{n: b.pid(API_PROGRAM) for n, (b, _) in apis.items()},
                "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][0].pid}
        if pin:
            # (the launch gate execs llama-server: the model program's pid is the server's)
            pin_apart(list(pids.values()), [b.pid(model_program("m")) for b, _ in apis.values()])
        cpu_per_request_us(pids, urls, 300)  # warm-up
        rows = []
        for _ in range(passes):
            lat, cpu = cpu_per_request_us(pids, urls, requests)
            over = overhead({n: summary_ms(v) for n, v in lat.items()})
            row = {n: (cpu[n], over[n]["p50_ms"]) for n in pids}
            rows.append(row)
            print({n: f"{c} µs, p50 +{p:.3f} ms" for n, (c, p) in row.items()}, flush=True)
        floor, medians = "bare_uvicorn_upstream", {}
        for n in apis:
            ratio = statistics.median(r[n][0] / r[floor][0] for r in rows)
            added = statistics.median(r[n][1] - r[floor][1] for r in rows)
            medians[n] = (ratio, added)
            print(f"{n}: CPU {ratio:.2f} x the bare proxy's, p50 {added:+.3f} ms over it (median of {passes})")
        if before:
            what = "a limited named key" if named else "the env key"
            p50 = statistics.median(r["compute_api"][1] - r["compute_api_before"][1] for r in rows)
            cpu = statistics.median(r["compute_api"][0] - r["compute_api_before"][0] for r in rows)
            print(f"this tree with {what}, against {before} with the env key: p50 {p50:+.3f} ms, CPU {cpu:+.0f} µs "
                  "per request (medians)")
        return medians
    finally:
        for proc, _ in bare.values():
            proc.terminate()
        for b, _ in apis.values():
            stop(b)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("passes", nargs="?", type=int, default=5)
    p.add_argument("requests", nargs="?", type=int, default=1500)
    p.add_argument("--before", metavar="REF")
    p.add_argument("--env-key", action="store_true", help="with --before: this tree's requests carry the "
                   "environment's key too (no named key, no limits)")
    p.add_argument("--pin", action="store_true", help="the proxies on CPU 0, the client and the llama-servers "
                   "on CPU 1")
    a = p.parse_args()
    main(a.passes, a.requests, a.before, not a.env_key, pin=a.pin)
