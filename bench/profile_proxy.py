"""Where the compute API's CPU goes on the hot path: 1-token completions with keys on, sent
interleaved to the compute API and to the bare proxy (bench/bare_proxy.py, the floor), CPU per
request of each, while py-spy samples the compute API. Writes a flame graph (SVG) and prints
the functions by share of samples (inclusive, and self).

    python bench/profile_proxy.py [SECONDS] [OUT.svg]
"""
from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from common import stop
from models import model
from proxy import cpu_per_request_us, model_entry, start_bare, start_keyed
from llamarig.backend.models_make import GgufSize
from llamarig.backend.supervisor_conf import API_PROGRAM

PY_SPY = Path(sys.executable).parent / "py-spy"


def _top(raw: Path, n: int = 30) -> list[str]:
    """Functions by share of the samples taken while a request was being handled (a frame of
    uvicorn's request cycle or the upstream client on the stack; the rest is the loop waiting,
    the health loop and the like): inclusive (anywhere on the stack) and self (on top)."""
    inclusive, own, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";") if f]
        if not any("run_asgi" in f or "upstream.py" in f or "httptools_impl" in f for f in frames):
            continue
        total += int(count)
        for f in set(frames):
            inclusive[f] += int(count)
        if frames:
            own[frames[-1]] += int(count)
    rows = [f"{total} samples handling requests; inclusive share, self share, function"]
    for f, c in [(f, c) for f, c in inclusive.most_common() if ".py)" in f][:n]:  # (Python's frames)
        rows.append(f"{c / total:6.1%} {own[f] / total:6.1%}  {f}")
    return rows


def _record(pid: int, fmt: str, out: Path, seconds: float, pids: dict, urls: dict) -> list[dict]:
    """py-spy samples the compute API while the load runs; the CPU per request of each pass
    (py-spy's pauses included)."""
    # --native: uvloop's and httptools' C frames too (without, most samples read "Runner.run");
    # it pauses the process at each sample, so the CPU figures printed while sampling read high.
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--rate", "250", "--format", fmt,
                            "--output", str(out), "--duration", str(int(seconds)), "--native"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    passes = []
    while spy.poll() is None:
        passes.append(cpu_per_request_us(pids, urls, 200)[1])
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode()[-500:]}")
    return passes


def main(seconds: float, svg: Path) -> None:
    if not PY_SPY.exists():
        raise SystemExit(f"py-spy is not installed in this venv ({PY_SPY}): {Path(sys.executable).parent}/pip "
                         "install py-spy")
    folder = Path(tempfile.mkdtemp(prefix="llamarig-profile-"))
    entry = model_entry(model("tiny", GgufSize()), [0], parallel=64, context_size=64 * 64)
    b = start_keyed(folder, entry)
    bare = {}
    try:
        b.wait_ready(120)
        bare = start_bare(folder, entry["port"])
        api = b.pid(API_PROGRAM)
        urls = {"compute_api": f"{b.api}/v1/completions", "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][1]}
        pids = {"compute_api": api, "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][0].pid}
        print("warm-up, CPU µs per request:", cpu_per_request_us(pids, urls, 300)[1])
        raw = folder / "profile.folded"
        print("while sampled:", _record(api, "raw", raw, seconds, pids, urls))
        print("\n".join(_top(raw)))
        _record(api, "flamegraph", svg, min(seconds, 10), pids, urls)
        print(f"flame graph: {svg}; collapsed stacks: {raw}")
    finally:
        for proc, _ in bare.values():
            proc.terminate()
        stop(b)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20,
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.gettempdir()) / "proxy-flame.svg")
