"""The benchmarks still run (short --smoke runs); no time is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_and_writes_json_and_a_table(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["results"]) == {"proxy", "boot", "crash", "verify", "churn", "switch", "work", "gpu", "gpu_lend",
                                          "batch", "planner"}
    work = results["results"]["work"]
    assert work["chain"]["step_overhead_p50_ms"] > 0 and work["fan_out"]["tasks_per_s"] > 0
    assert work["dag"]["bound_s"] > 0 and work["kill"]["rerun_after_start_s"] >= work["kill"]["heartbeat_timeout_s"]
    assert work["cancel"]["cancels"] == 2 and work["cancel"]["cancel_to_sigterm_s_max"] > 0
    assert [work[k]["order"] for k in ("dag_chains", "dag", "dag_learned")] == ["chains", "given", "learned"]
    shipped = yaml.safe_load((ROOT / "runtime" / "rig.yaml").read_text())["work"]["concurrency"]["cpu"]
    assert work["dag_shipped"]["concurrency"] == shipped and work["dag_shipped"]["order"] == "given"
    assert work["temporal_floor"]["noop_tasks_per_s"] > 0 and work["temporal_floor"]["command_tasks_per_s"] > 0
    assert set(results["results"]["switch"]["median"]) == {"to_script", "to_llm"}
    assert results["smoke"] and results["machine"]["cpus"] >= 1
    batch = results["results"]["batch"]
    assert batch["batch"]["ratio_median"] > 0 and batch["batch"]["placements"]["max_serving"] >= 1
    assert batch["noop_map"]["items"] == 500 and batch["noop_map"]["slice_history"]["events"] > 500
    planner = results["results"]["planner"]
    assert planner["steps"] >= 100 and planner["failures"] == [], planner
    proxy = results["results"]["proxy"]
    assert {"direct", "compute_api"} <= set(proxy["one_token"]) and set(proxy["streams_per_s"]) == {"1", "16", "64"}
    assert {"bare_uvicorn_upstream", "bare_uvicorn_aiohttp"} <= set(proxy["one_token"])
    assert set(proxy["cpu_us_per_request"]) == {"compute_api", "bare_uvicorn_upstream", "bare_uvicorn_aiohttp"}
    assert "| 1: near | bare_uvicorn_upstream |" in done.stdout
    # the share of direct pairs each rep's blocks: one rate per rep, a share per proxy
    assert all(len(v) == 1 for v in proxy["streams_per_s_each_rep"]["64"].values())
    assert set(proxy["share_of_direct"]["64"]) == set(proxy["targets"]) - {"direct"}
    assert results["results"]["verify"]["unchanged_reads_within_1_kib_across_sizes"] is True
    assert all(v["waves"] == 1 and v["loads_together_s"] > 0 for v in results["results"]["boot"]["variants"].values())
    assert "skipped" in results["results"]["gpu"] and "skipped" in results["results"]["gpu_lend"]  # no NVML device here (CI)
    for title in ("## Proxy overhead", "## Boot", "## Crash to ready", "## Verification cost", "## Churn",
                  "## GPU switch", "## The work layer", "## CUDA paths on a real GPU"):
        assert title in done.stdout
    assert "on a plain SDK worker, same server" in done.stdout and "by learned durations" in done.stdout
    assert "(runtime/rig.yaml's concurrency.cpu), with expected_s" in done.stdout
