"""Run the benchmarks: `python bench/run.py [NAME ...] [--smoke] [--out FILE]`.

NAME is one or more of proxy, boot, crash, verify, churn, switch, work, gpu, gpu_lend, batch, planner (default: all; the gpu ones skip themselves
where NVML finds no device). Writes the results as
JSON (default bench/results.json) and prints a markdown table. --smoke runs each briefly, to
keep them working (CI); its numbers mean nothing. No benchmark asserts a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch  # noqa: E402
import boot  # noqa: E402
import churn  # noqa: E402
import crash  # noqa: E402
import gpu  # noqa: E402
import gpu_lend  # noqa: E402
import planner_long  # noqa: E402
import proxy  # noqa: E402
import switch  # noqa: E402
import verify_cost  # noqa: E402
import work  # noqa: E402
from common import ON_GPU  # noqa: E402
from report import markdown  # noqa: E402

BENCHMARKS = {"proxy": proxy.run, "boot": boot.run, "crash": crash.run, "verify": verify_cost.run,
              "churn": churn.run, "switch": switch.run, "work": work.run, "gpu": gpu.run,
              "gpu_lend": gpu_lend.run, "batch": batch.run, "planner": planner_long.run}


def machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "gpu": _gpu_name(), "python_loop_ms": python_loop_ms()}


def python_loop_ms() -> float:
    """A fixed pure-Python loop, best of 5: how fast this machine runs Python right now. A shared
    VM's speed drifts (the same boot measured 1.7 s and 2.4 s within one hour here); runs are
    comparable where this is."""
    import timeit

    return round(min(timeit.repeat("sum(range(3_000_000))", number=1, repeat=5)) * 1000, 1)


def _gpu_name() -> str:
    if not ON_GPU:
        return "none used (simulated inventory; servers on the CPU)"
    reading = gpu.open_inventory(gpu.GpusConfig(source="nvml", simulated=[])).read()[0]
    return f"{reading.name}, {reading.total_bytes // 2**20} MiB (NVML; servers on GPU 0)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}; default: all")
    p.add_argument("--smoke", action="store_true", help="short runs that only prove each benchmark works")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.json"))
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "smoke": args.smoke, "machine": machine(), "results": {}}
    for name in names:
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results["results"][name] = BENCHMARKS[name](args.smoke)
        results["results"][name]["wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
