"""CPU per 1-token request of the compute API (keys on) against the bare proxy, measured in
several interleaved passes of many requests each (a pass of 300 reads to one clock tick in 8 %):
the ratio of each pass and their median.

    python bench/cpu_pairs.py [PASSES [REQUESTS]]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import stop
from models import model
from proxy import cpu_per_request_us, model_entry, overhead, start_bare, start_keyed, summary_ms
from llamarig.backend.models_make import GgufSize
from llamarig.backend.supervisor_conf import API_PROGRAM


def main(passes: int, requests: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-cpu-pairs-"))
    entry = model_entry(model("tiny", GgufSize()), [0], parallel=64, context_size=64 * 64)
    b = start_keyed(folder, entry)
    bare = {}
    try:
        b.wait_ready(120)
        bare = start_bare(folder, entry["port"])
        urls = {"direct": f"http://127.0.0.1:{entry['port']}/v1/completions", "compute_api": f"{b.api}/v1/completions",
                "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][1]}
        pids = {"compute_api": b.pid(API_PROGRAM), "bare_uvicorn_upstream": bare["bare_uvicorn_upstream"][0].pid}
        cpu_per_request_us(pids, urls, 300)  # warm-up
        ratios, added = [], []
        for _ in range(passes):
            lat, cpu = cpu_per_request_us(pids, urls, requests)
            over = overhead({n: summary_ms(v) for n, v in lat.items()})
            ratios.append(cpu["compute_api"] / cpu["bare_uvicorn_upstream"])
            added.append(over["compute_api"]["p50_ms"] - over["bare_uvicorn_upstream"]["p50_ms"])
            print(f"CPU µs {cpu}, ratio {ratios[-1]:.2f}; p50 over the bare proxy {added[-1]:+.3f} ms", flush=True)
        print(f"median of {passes}: ratio {statistics.median(ratios):.2f}, p50 {statistics.median(added):+.3f} ms")
    finally:
        for proc, _ in bare.values():
            proc.terminate()
        stop(b)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, int(sys.argv[2]) if len(sys.argv) > 2 else 1500)
