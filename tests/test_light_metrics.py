"""The per-request metrics' light kind reads the same as prometheus_client's own, sample for
sample: bucket edges (a value on a bound counts in it), sums, counts and labels."""
import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llamarig.api.compute.light_metrics import LightCounter, LightHistogram
from llamarig.api.compute.metrics import LATENCY_BUCKETS


def _lines(registry) -> set[str]:
    return {line for line in generate_latest(registry).decode().splitlines() if "_created" not in line}


def test_light_counters_and_histograms_read_as_prometheus_clients_do():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    c1, c2 = Counter("x_total", "h", ["model", "code"], registry=theirs), LightCounter("x_total", "h", ["model", "code"], ours)
    h1 = Histogram("y_seconds", "h", ["model"], buckets=LATENCY_BUCKETS, registry=theirs)
    h2 = LightHistogram("y_seconds", "h", ["model"], LATENCY_BUCKETS, ours)
    rng = random.Random(7)
    values = list(LATENCY_BUCKETS) + [0.0, 500.0] + [rng.uniform(0, 200) for _ in range(500)]
    for v in values:
        model = rng.choice(["a", "b"])
        code = rng.choice(["200", "503"])
        c1.labels(model, code).inc(3)
        c2.inc((model, code), 3)
        h1.labels(model).observe(v)
        h2.observe((model,), v)
    assert _lines(ours) == _lines(theirs)
