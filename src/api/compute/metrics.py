"""Prometheus metrics of the compute API, prefixed `llamarig_`, units in the names, no
changing values in labels. Gauges of current state (unit states, GPUs, supervisord) are read
at scrape time by a collector; counters and histograms are fed by events. Scrapes never touch
a model, so they never count as activity."""
from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from llamarig.api.compute.light_metrics import LightCounter, LightHistogram
from llamarig.backend.lifecycle.jobs import Events
from llamarig.backend.lifecycle.gpu_modes import Mode
from llamarig.backend.lifecycle.thermal import Level
from llamarig.shared.gpus import THROTTLE
from llamarig.backend.lifecycle.states import State

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
CODES = {code: str(code) for code in range(100, 600)}  # (a status code's label, not made per request)
SUPERVISOR_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")


def restart_kind(reason: str) -> str:
    """A bounded label for a restart reason."""
    for pattern, kind in ((r"probe", "health_probe"), (r"exited", "process_exit"), (r"start failed", "start_failed")):
        if re.search(pattern, reason):
            return kind
    return "other"


class Metrics(Events):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Per request: the light kind (light_metrics.py).
        self.requests = LightCounter("llamarig_requests_total", "Requests by model, route and status code.",
                                     ["model", "route", "code"], r)
        self.duration = LightHistogram("llamarig_request_duration_seconds", "Request arrival to last byte.",
                                       ["model", "route"], LATENCY_BUCKETS, r)
        self.ttft = LightHistogram("llamarig_time_to_first_token_seconds", "Request arrival to first byte of "
                                   "the answer.", ["model", "route"], LATENCY_BUCKETS, r)
        self.keys_refused = LightCounter("llamarig_key_refused_total", "Requests with a known key that is revoked "
                                         "or expired, by key name and why.", ["key", "why"], r)
        self.tokens = LightCounter("llamarig_tokens_generated_total", "Tokens generated, counted from the "
                                   "answers as they pass (stream events, or usage.completion_tokens).", ["model"], r)
        self.cold_starts = Counter("llamarig_cold_starts_total", "Requests that waited for a model to load.",
                                   ["model"], registry=r)
        self.cold_start = Histogram("llamarig_cold_start_seconds", "Arrival to first byte when the model was "
                                    "cold.", ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.loads = Counter("llamarig_model_loads_total", "Loads that ended ready.", ["model"], registry=r)
        self.load_duration = Histogram("llamarig_model_load_duration_seconds", "Start to ready.", ["model"],
                                       buckets=LOAD_BUCKETS, registry=r)
        self.restarts = Counter("llamarig_model_restarts_total", "Restarts scheduled after a failure.",
                                ["model", "reason"], registry=r)
        self.probe_failures = Counter("llamarig_health_probe_failures_total", "Failed health probes.",
                                      ["model"], registry=r)
        self.probes = Counter("llamarig_health_probes_total", "Health probes by kind (liveness: the "
                              "ready path; deep: a one-token completion) and result.", ["model", "kind", "result"],
                              registry=r)
        self.refusals = Counter("llamarig_model_file_refusals_total", "Model files refused by the verifier.",
                                ["model", "code"], registry=r)
        self.stop_unverified = Counter("llamarig_stop_unverified_total", "Stops after which a process, "
                                       "the port or GPU memory was still held.", ["model"], registry=r)
        self.transitions = Counter("llamarig_model_transitions_total", "State changes, but for "
                                   "ready <-> busy at every request (llamarig_requests_total counts those).",
                                   ["model", "target"], registry=r)
        self.auth_failures = Counter("llamarig_auth_failures_total", "Requests refused for a missing or wrong "
                                     "key, by route group (client, operator, health, ready, metrics).", ["group"],
                                     registry=r)
        self.validator_gaps = Counter("llamarig_validator_gaps_total", "Requests the compute API validated that "
                                      "an engine still answered 5xx: a gap in the validator.", ["model", "route"],
                                      registry=r)
        self.switches = Counter("llamarig_gpu_switches_total", "GPU switches between LLM and script work, by "
                                "direction (to_script, to_llm).", ["gpu", "direction"], registry=r)
        self.switch_seconds = Histogram("llamarig_gpu_switch_seconds", "Seconds a GPU switch took, from its "
                                        "start to the new holder ready.", ["direction"], registry=r,
                                        buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.verified: dict[str, int] = {}
        self._transition_series: dict[tuple, object] = {}
        self.vram: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
        self.circuit: dict[str, int] = {}

    def attach(self, manager) -> None:
        """Read the manager's current state at scrape time."""
        self.registry.register(_StateCollector(manager, self))

    # ---- request events -----------------------------------------------------------------------
    def request_done(self, model: str, route: str, code: int, seconds: float, first_byte: float | None,
                     cold: bool, tokens: int = 0) -> None:
        series = (model, route)
        self.requests.inc((model, route, CODES.get(code) or str(code)))
        if tokens:
            self.tokens.inc((model,), tokens)
        self.duration.observe(series, seconds)
        if first_byte is not None:
            self.ttft.observe(series, first_byte)
            if cold:
                self.cold_starts.labels(model).inc()
                self.cold_start.labels(model).observe(first_byte)

    def key_refused(self, name: str, why: str) -> None:
        self.keys_refused.inc((name, why))

    def auth_failed(self, group: str) -> None:
        self.auth_failures.labels(group).inc()

    def validator_gap(self, model: str, route: str) -> None:
        self.validator_gaps.labels(model, route).inc()

    # ---- lifecycle events ---------------------------------------------------------------------
    def on_transition(self, unit, source, target, reason):
        # The series is looked up once, like _children's.
        key = (unit.name, target)
        series = self._transition_series.get(key)
        if series is None:
            series = self._transition_series[key] = self.transitions.labels(unit.name, target.value)
        series.inc()

    def on_ready(self, unit, load_seconds):
        self.loads.labels(unit.name).inc()
        if load_seconds is not None:
            self.load_duration.labels(unit.name).observe(load_seconds)

    def on_restart(self, unit, reason):
        self.restarts.labels(unit.name, restart_kind(reason)).inc()

    def on_switch(self, gpu, direction, seconds):
        self.switches.labels(str(gpu), direction).inc()
        self.switch_seconds.labels(direction).observe(seconds)

    def on_circuit(self, unit, is_open):
        self.circuit[unit.name] = int(is_open)

    def on_probe(self, unit, ok, kind):
        self.probes.labels(unit.name, kind, "ok" if ok else "failed").inc()
        if not ok:
            self.probe_failures.labels(unit.name).inc()

    def on_verdict(self, unit, verdict):
        self.verified[unit.name] = int(verdict.ok)
        if not verdict.ok:
            self.refusals.labels(unit.name, verdict.code).inc()

    def on_stop_verified(self, unit, ok, reason):
        if not ok:
            self.stop_unverified.labels(unit.name).inc()

    def on_memory(self, unit, estimate, actual):
        self.vram[unit.name] = (estimate, actual)


class _StateCollector:
    def __init__(self, manager, metrics: Metrics):
        self.manager = manager
        self.metrics = metrics

    def collect(self):
        yield from self._units()
        yield from self._vram()
        yield from self._gpus()
        yield from self._supervisor()

    def _units(self):
        state = GaugeMetricFamily("llamarig_model_state", "1 for the state each model is in.",
                                  labels=["model", "state"])
        inflight = GaugeMetricFamily("llamarig_requests_inflight", "Requests being served.", labels=["model"])
        waiting = GaugeMetricFamily("llamarig_requests_waiting", "Requests waiting for a load.", labels=["model"])
        circuit = GaugeMetricFamily("llamarig_model_circuit_open", "1 while restarts are stopped.",
                                    labels=["model"])
        verified = GaugeMetricFamily("llamarig_model_file_verified", "1: last verification passed; 0: refused.",
                                     labels=["model"])
        required = GaugeMetricFamily("llamarig_model_required", "1 for models /ready waits for.", labels=["model"])
        for name, actor in self.manager.actors.items():
            for s in State:
                state.add_metric([name, s.value], 1.0 if actor.state == s else 0.0)
            inflight.add_metric([name], actor.inflight)
            waiting.add_metric([name], len(actor.waiters))
            circuit.add_metric([name], 1.0 if actor.policy.is_open else 0.0)
            required.add_metric([name], 1.0 if actor.unit.required and actor.unit.warm else 0.0)
            if name in self.metrics.verified:
                verified.add_metric([name], self.metrics.verified[name])
        yield from (state, inflight, waiting, circuit, verified, required)

    def _vram(self):
        est = GaugeMetricFamily("llamarig_vram_estimate_bytes", "Estimated memory per model and GPU.",
                                labels=["model", "gpu"])
        act = GaugeMetricFamily("llamarig_vram_actual_bytes", "Measured memory per model and GPU after its "
                                "last load.", labels=["model", "gpu"])
        for name, (estimate, actual) in self.metrics.vram.items():
            for gpu, n in estimate.items():
                est.add_metric([name, str(gpu)], n)
            for gpu, n in actual.items():
                act.add_metric([name, str(gpu)], n)
        yield from (est, act)

    def _gpus(self):
        inv = self.manager.inventory
        used = GaugeMetricFamily("llamarig_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "name"])
        total = GaugeMetricFamily("llamarig_gpu_memory_total_bytes", "GPU memory in all.", labels=["gpu", "name"])
        util = GaugeMetricFamily("llamarig_gpu_utilization_ratio", "GPU busy share, 0-1.", labels=["gpu"])
        temp = GaugeMetricFamily("llamarig_gpu_temperature_celsius", "GPU temperature.", labels=["gpu"])
        power = GaugeMetricFamily("llamarig_gpu_power_watts", "GPU power draw.", labels=["gpu"])
        limit = GaugeMetricFamily("llamarig_gpu_power_limit_watts", "GPU power limit in force.", labels=["gpu"])
        throttle = GaugeMetricFamily("llamarig_gpu_throttle", "1 for each reason NVML gives for holding the GPU's "
                                     "clocks down now.", labels=["gpu", "reason"])
        simulated = GaugeMetricFamily("llamarig_gpu_simulated", "1: the simulated inventory stands in (no "
                                      "NVML device); memory is the resident memory of pinned processes.")
        last = GaugeMetricFamily("llamarig_gpu_last_reading_timestamp_seconds", "Unix time of the last "
                                 "successful GPU reading.")
        simulated.add_metric([], 1.0 if inv.simulated else 0.0)
        try:
            readings = inv.read()
        except Exception:  # a failed reading shows as a stale timestamp, which is alerted on
            readings = []
        else:
            self.metrics.last_gpu_reading = time.time()
        for g in readings:
            labels = [str(g.index), g.name]
            used.add_metric(labels, g.used_bytes)
            total.add_metric(labels, g.total_bytes)
            for family, value in ((util, g.utilization_pct), (temp, g.temperature_c), (power, g.power_w),
                                  (limit, g.power_limit_w)):
                if value is not None:
                    family.add_metric([str(g.index)], value / 100 if family is util else value)
            if not inv.simulated:
                for reason in THROTTLE.values():
                    throttle.add_metric([str(g.index), reason], 1.0 if reason in g.throttle else 0.0)
        last.add_metric([], getattr(self.metrics, "last_gpu_reading", 0.0))
        yield from (used, total, util, temp, power, limit, throttle, simulated, last, self._modes(), self._thermal())

    def _thermal(self):
        family = GaugeMetricFamily("llamarig_gpu_thermal_level", "1 for each GPU's thermal level: ok, hot (at or "
                                   "past thermal.target_c: no new script work), slowdown (at or past "
                                   "thermal.slowdown_c: script work moved off).", labels=["gpu", "level"])
        t = self.manager.planner.thermal
        for gpu in self.manager.modes.gpus:
            for level in Level:
                family.add_metric([str(gpu), level.value], 1.0 if t.level(gpu) is level else 0.0)
        return family

    def _modes(self):
        family = GaugeMetricFamily("llamarig_gpu_mode", "1 for the mode each GPU is in: idle, llm, to_script, "
                                   "script, to_llm.", labels=["gpu", "mode"])
        for gpu, g in self.manager.modes.gpus.items():
            for mode in Mode:
                family.add_metric([str(gpu), mode.value], 1.0 if g.mode == mode else 0.0)
        return family

    def _supervisor(self):
        family = GaugeMetricFamily("llamarig_supervisor_process_state", "1 for the supervisord state of each "
                                   "program, from the last health tick.", labels=["program", "state"])
        for program, statename in self.manager.program_states.items():
            for s in SUPERVISOR_STATES:
                family.add_metric([program, s], 1.0 if statename == s else 0.0)
        yield family

