"""The markdown table of a results file (bench/run.py prints it; RESULTS.md holds the latest)."""
from __future__ import annotations


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pass_rows(name: str, stats: dict, over: dict, cpu: dict | None = None) -> list[str]:
    rows = []
    for t, one in stats.items():
        added = f"+{over[t]['p50_ms']}" if t in over else "-"
        cells = [name, t, one["p50_ms"], one["p90_ms"], one["p99_ms"], added]
        rows.append(_row(*cells, *([cpu.get(t, "-")] if cpu is not None else [])))
    return rows


def _proxy(r: dict) -> list[str]:
    lines = ["1-token completions, each pass interleaved in an order shuffled per round (bare_uvicorn_*: "
             "bench/bare_proxy.py, the compute API's uvicorn settings and one upstream client, no llamarig "
             "logic):", "",
             _row("pass", "target", "p50 ms", "p90 ms", "p99 ms", "p50 added ms", "CPU µs per request"),
             _row(*["---"] * 7)]
    lines += _pass_rows("1: near", r["one_token"], r["one_token_overhead_ms"], r["cpu_us_per_request"])
    lines += _pass_rows("2: with LiteLLM", r["one_token_with_litellm"], r["with_litellm_overhead_ms"],
                        r["cpu_us_per_request_with_litellm"])
    lines += ["", "Time to the first token of a 16-token stream, the same two passes:", "",
              _row("pass", "target", "p50 ms", "p90 ms", "p99 ms", "p50 added ms"), _row(*["---"] * 6)]
    lines += _pass_rows("1: near", r["ttft_stream"], r["ttft_overhead_ms"])
    lines += _pass_rows("2: with LiteLLM", r.get("ttft_stream_with_litellm", {}),
                        r.get("ttft_with_litellm_overhead_ms", {}))
    lines += ["", "Streams per second (16 tokens each), by concurrent clients: the median of the reps, and the "
              "median over reps of the rate over direct's in the same rep:", "",
              _row("target", "@1", "@16", "@64", "of direct @1", "@16", "@64"), _row(*["---"] * 7)]
    for t in r["targets"]:
        shares = [f"{r['share_of_direct'][c][t]:.1%}" if t != "direct" else "-" for c in ("1", "16", "64")]
        lines.append(_row(t, *(r["streams_per_s"][c][t] for c in ("1", "16", "64")), *shares))
    over = r["one_token_overhead_ms"]["compute_api"]
    lines += ["", f"- compute API over direct, 1-token (pass 1): +{over['p50_ms']} ms p50, +{over['p99_ms']} ms p99",
              f"- compute API at 64 concurrent streams: {r['compute_api_share_of_direct_at_64']:.1%} of direct "
              f"(clients keep their connection where the server allows: not llama-server's after a stream); "
              f"with a new connection per stream for every target: "
              f"{r.get('share_at_64_new_connection_each', 0):.1%} ({r.get('streams_per_s_64_new_connection_each')})",
              f"- LiteLLM: {r['litellm']}", f"- targets: {r['targets_goal']}"]
    if r.get("throughput_errors"):
        lines.append(f"- failed streams in the throughput runs (not counted): {r['throughput_errors']}; "
                     f"last: {r['throughput_last_error']}")
    return lines


def _boot(r: dict) -> list[str]:
    lines = [_row("variant", "model", "boot to /ready s", "slowest load alone s", "over slowest s", "all by hand s",
                  "over all by hand s", "waves", "loads alone s"), _row(*["---"] * 9)]
    for name, v in r["variants"].items():
        loads = ", ".join(f"{k} {s}" for k, s in v["load_alone_s"].items())
        lines.append(_row(name, v.get("model", r.get("model", "-")), v["boot_to_ready_s"], v["slowest_load_s"], v["over_slowest_s"],
                          v.get("loads_together_s", "-"), v.get("over_together_s", "-"), v["waves"], loads))
    return lines + ["", f"- target: {r['target']}", f"- {r.get('together', '')}"]


def _crash(r: dict) -> list[str]:
    return [_row("case", "measured s", "bound s"), _row("---", "---", "---"),
            _row("kill -9 to first 200 (median)", r["kill9_median_s"], f"{r['target_s']} (interval + load + 1)"),
            _row("SIGSTOP to failed", ", ".join(map(str, r["sigstop_to_failed_s"])), r["sigstop_expected_s"]),
            "", f"- load alone {r['load_alone_s']} s; health interval {r['health_interval_s']} s; "
            f"first restart delay {r['backoff_initial_s']} s; runs: {r['kill9_to_first_200_s']}"]


def _verify(r: dict) -> list[str]:
    lines = [_row("file GiB", "case", "seconds", "bytes read"), _row("---", "---", "---", "---")]
    for s in r["sizes"]:
        for case in ("first_no_sha256", "first_sha256", "unchanged_sha256"):
            lines.append(_row(s["file_gib"], case, s[case]["seconds"], f"{s[case]['bytes_read']:,}"))
    key = "unchanged_reads_within_1_kib_across_sizes"
    return lines + ["", f"- unchanged reads the same bytes for both sizes: {r[key]}"]


def _churn(r: dict) -> list[str]:
    return [_row("cycles", "API RSS MiB before/after", "growth KiB/cycle", "API fds", "processes"),
            _row(*["---"] * 5),
            _row(r["cycles"], " / ".join(map(str, r["api_rss_mib"])), r["api_rss_growth_kib_per_cycle"],
                 " / ".join(map(str, r["api_open_fds"])), " / ".join(map(str, r["bundle_processes"])))]


def _switch(r: dict) -> list[str]:
    if "skipped" in r:
        return [f"Skipped: {r['skipped']}"]
    rows = [_row("direction", "switch, median s", "by hand, median s", "over by hand s"), _row(*["---"] * 4)]
    rows += [_row(d, m["switch_s"], m["by_hand_s"], m["over_by_hand_s"]) for d, m in r["median"].items()]
    return rows + ["", f"- {r['rounds']} round trips; target: {r['target']}"]


def _gpu(r: dict) -> list[str]:
    if "skipped" in r:
        return [f"Skipped: {r['skipped']}"]
    if "failed" in r:
        return [f"Failed: {r['failed']} (what it saw: the JSON's `seen`)"]
    return [_row("measure", "value"), _row("---", "---")] + [
        _row(k.replace("_", " "), v) for k, v in r.items() if k != "wall_s"]


def _work(r: dict) -> list[str]:
    c = r.get("celery_redis", {})
    def other(*keys):
        return _dig(c, keys) if "chain" in c else "-"

    rows = [_row("measure", "llamarig (Temporal, embedded)", "Celery + Redis", "target"), _row(*["---"] * 4),
            _row(f"chain of {r['chain']['tasks']}: overhead per dependent step, p50 ms",
                 r["chain"]["step_overhead_p50_ms"], other("chain", "step_overhead_p50_ms"), r["chain"]["target"]),
            _row(f"fan-out of {r['fan_out']['tasks']} ({r['fan_out'].get('cpu_processes', 1)} cpu processes): tasks/s",
                 r["fan_out"]["tasks_per_s"],
                 other("fan_out", "tasks_per_s"), r["fan_out"]["target"]),
            _row(f"fan-out of {r['fan_out']['tasks']} on a plain SDK worker, same server: no-op / "
                 "the same command and files, tasks/s", "{} / {}".format(*_floor(r)), "-", "(what this machine allows)"),
            *(_dag_row(r[k], k == "dag") for k in ("dag", "dag_chains", "dag_learned") if k in r),
            *([_dag_row(r["dag_shipped"], True, " (runtime/rig.yaml's concurrency.cpu)")]
              if "dag_shipped" in r else []),
            _row("the same DAG on a plain SDK worker, same server, same priority keys: makespan s (over the bound)",
                 _floor_dag(r), "-", "(what this machine allows)"),
            _row("kill -9 of a worker mid-task: runs again after s (from the kill / from the attempt's start)",
                 f"{r['kill']['rerun_after_s']} / {r['kill'].get('rerun_after_start_s', '-')}",
                 other("kill", "rerun_after_s"), f"heartbeat_timeout_s {r['kill']['heartbeat_timeout_s']} "
                 f"(Celery: Redis visibility_timeout {_dig(c, ('kill', 'visibility_timeout_s')) if 'kill' in c else '-'} s)"),
            *([_row(f"llamarig cancel to SIGTERM in the running command, p50 / max of {r['cancel']['cancels']}: s",
                    f"{r['cancel']['cancel_to_sigterm_s_p50']} / {r['cancel']['cancel_to_sigterm_s_max']}", "-", "≤ 2")]
              if "cancel" in r else [])]
    note = c.get("skipped") or c.get("failed")
    return rows + (["", f"- Celery: {note}"] if note else [])


def _dag_row(d: dict, first: bool, where: str = "") -> str:
    order = d.get("order", "chains")  # (results from before expected_s: the chain order)
    given = {"given": "with expected_s", "chains": "ordered by its chains", "learned": "by learned durations"}[order]
    return _row(f"DAG of {d['tasks']} at {d['concurrency']}{where}, {given}: makespan s (critical-path bound s, "
                "over; over a zero-overhead list schedule in llamarig's order)",
                f"{d['makespan_s']} ({d['bound_s']}, +{d['over_bound_pct']} %; "
                f"+{d.get('over_list_schedule_pct', '-')} %)",
                "-", d["target"] if first else "(for comparison)")


def _floor(r: dict) -> tuple:
    f = r.get("temporal_floor", {})
    return f.get("noop_tasks_per_s", "-"), f.get("command_tasks_per_s", "-")


def _floor_dag(r: dict) -> str:
    span = r.get("temporal_floor", {}).get("dag_makespan_s")
    return "-" if not span else f"{span} (+{round((span / r['dag']['bound_s'] - 1) * 100, 1)} %)"


def _dig(d: dict, keys) -> object:
    for k in keys:
        d = d.get(k, "-") if isinstance(d, dict) else "-"
    return d


def _batch(r: dict) -> list[str]:
    b, n = r["batch"], r["noop_map"]
    places, rss = b["placements"], b["peak_rss_mib"]
    return [_row("measure", "value", "target"), _row(*["---"] * 3),
            _row(f"{b['files']} wav files of {b['seconds_per_file']} s: transcribe, summarise, embed, report "
                 f"(for_each), makespan s: plan / the same calls by asyncio (floor), {len(b['pairs'])} alternated pairs; "
                 "median ratio", "; ".join(f"{p['plan_makespan_s']} / {p['floor_makespan_s']}" for p in b["pairs"])
                 + f"; {b['ratio_median']}", "ratio ≤ 1.15"),
            _row("Whisper placements serving at once, most; share of samples with every placement busy while "
                 "at least 3 requests were outstanding", f"{places['max_serving']}; {places['all_busy_share_while_backlog']}"
                 f" of {places['samples_with_backlog']}", "3; every one"),
            _row("GPUs given to script work during the plan (a placement started)", b["gpu_switches"], "-"),
            _row("history bytes per item (plan and its slices)", b["history_bytes_per_item"], "independent of output size"),
            _row("peak RSS MiB: compute API / work-cpu / work-gpu / temporal",
                 " / ".join(str(rss[k]) for k in ("compute-api", "work-cpu", "work-gpu", "temporal")), "bounded"),
            _row(f"llamarig cancel to SIGTERM, p50 / max of {b['cancels']}: s",
                 f"{b['cancel_to_sigterm_s_p50']} / {b['cancel_to_sigterm_s_max']}", "≤ 2"),
            _row(f"no-op map of {n['items']} items ({n['slices']} slices): wall s, items/s (a hand-listed fan-out of "
                 "1000 on the same bundle: tasks/s)", f"{n['wall_s']}, {n['items_per_s']} ({n['fan_out_tasks_per_s']})",
                 "completes"),
            _row("the map's histories: the plan's events / bytes; one slice's events / bytes",
                 f"{n['plan_history']['events']} / {n['plan_history']['bytes']}; {n['slice_history']['events']} / "
                 f"{n['slice_history']['bytes']}", "< 51,200 events, < 50 MiB"),
            _row("the map's peak RSS MiB: compute API / work-cpu / temporal; manifest MiB",
                 f"{n['peak_rss_mib']['compute-api']} / {n['peak_rss_mib']['work-cpu']} / {n['peak_rss_mib']['temporal']}"
                 f"; {n['manifest_mib']}", "bounded")]


def _planner(r: dict) -> list[str]:
    found = "; ".join(f.splitlines()[0] for f in r["failures"]) or "none"
    return [_row("steps", "examples", "seconds", "steps/s", "promises broken"), _row(*["---"] * 5),
            _row(r["steps"], r["examples"], r["seconds"], r["steps_per_s"], found)]


SECTIONS = {"proxy": ("Proxy overhead", _proxy), "boot": ("Boot", _boot), "crash": ("Crash to ready", _crash),
            "verify": ("Verification cost", _verify), "churn": ("Churn", _churn),
            "switch": ("GPU switch, each way, against the same by hand", _switch),
            "work": ("The work layer", _work), "gpu": ("CUDA paths on a real GPU", _gpu),
            "gpu_lend": ("A script command lent the real GPU", _gpu), "batch": ("Batches: for_each at scale", _batch),
            "planner": ("The planner's promises, model-based", _planner)}


def markdown(results: dict) -> str:
    m = results["machine"]
    out = [f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
           f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, GPU: {m['gpu']}, "
           f"Python speed: a fixed loop in {m.get('python_loop_ms', '?')} ms (bench/run.py python_loop_ms)"]
    if results["smoke"]:
        out.append("\n**Smoke run: the numbers mean nothing.**")
    for name, r in results["results"].items():
        title, fn = SECTIONS[name]
        out += ["", f"## {title} ({r['wall_s']} s)", ""] + fn(r)
    return "\n".join(out) + "\n"
