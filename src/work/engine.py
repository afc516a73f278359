"""Temporal, behind one module: the connection, the queue names, the embedded dev server's
command line, and the plan operations the CLI and the API use (submit, list, describe, cancel).

Priority: Temporal orders waiting tasks by priority_key (1 first) within one task-queue
partition, so the embedded server runs with priority.LEVELS levels and one partition per queue
(`EMBEDDED_DYNAMIC_CONFIG`); a cluster needs the same dynamic config for a strict order
(README, "Several rigs"). work/priority.py maps a task to its key.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

from llamarig.shared.errors import LlamarigError
from llamarig.shared.work_config import WorkConfig
from llamarig.work import namespace, priority

PLAN_WORKFLOW = "PlanWorkflow"
EMBEDDED_DYNAMIC_CONFIG = {
    "matching.useNewMatcher": "true",  # priority keys ordering tasks: the default only from Server 1.31
    "matching.priorityLevels": priority.LEVELS,
    "matching.numTaskqueueReadPartitions": 1,
    "matching.numTaskqueueWritePartitions": 1,
    "matching.backlogMetricsEmitInterval": '"30s"',  # approximate_backlog_age_seconds, for the backlog alert
    # The history service hands new tasks to matching at most 20 times a second by default: past
    # its burst, every dependent task waited ~40 ms for its turn (bench/RESULTS.md, session 10).
    "history.transferProcessorMaxPollRPS": 1000,
}


class WorkError(LlamarigError):
    """Temporal refused or could not be reached, or a plan is not known."""


def unanswered(what: str, why: str) -> WorkError:
    return WorkError("plan_unanswered", f"Temporal could not ask the workflow {what}: {why}; its worker fails "
                     "it (supervisorctl tail -8000 work-cpu)")


def failed_call(e, what: str) -> WorkError:
    """A Temporal call that failed (an RPCError) as the API answers it: the request refused (too
    large, not valid), else Temporal not answering (503, to retry)."""
    from temporalio.service import RPCStatusCode

    if e.status == RPCStatusCode.INVALID_ARGUMENT:
        code = "plan_too_large" if "size" in e.message.lower() else "plan_refused"
        return WorkError(code, f"Temporal refused {what}: {e.message}")
    if e.status == RPCStatusCode.FAILED_PRECONDITION:
        return unanswered(what, e.message)
    return WorkError("temporal_unreachable", f"Temporal did not answer {what}: {e.message} ({e.status.name}); is "
                     "it running (supervisorctl status temporal, or the cluster's address in work.cluster)?")


def queues(work: WorkConfig) -> dict[str, str]:
    """The task queue of each class: GPU work on QUEUE@gpu, cpu work and plans on QUEUE@cpu."""
    gpu, cpu = f"{work.queue}@gpu", f"{work.queue}@cpu"
    return {"gpu": gpu, "cpu": cpu, "script": gpu, "llm": gpu, "plan": cpu}


def address(rig) -> tuple[str, str]:
    """(host:port, namespace) the workers, the API and the CLI connect to (work/namespace.py)."""
    work = rig.work
    if work.temporal == "embedded":
        return f"127.0.0.1:{work.embedded.port}", namespace.of_rig(rig)
    return work.cluster.address, work.cluster.namespace


def embedded_command(work: WorkConfig, temporal_bin: str, db_file: str, namespace_name: str) -> list[str]:
    """`temporal server start-dev` on loopback, its SQLite file in WAL mode."""
    e = work.embedded
    cmd = [temporal_bin, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(e.port),
           "--db-filename", db_file, "--namespace", namespace_name, "--log-level", "warn",
           "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    cmd += ["--ui-port", str(e.ui_port)] if e.ui_port else ["--headless"]
    if e.metrics_port:
        cmd += ["--metrics-port", str(e.metrics_port)]
    for key, value in EMBEDDED_DYNAMIC_CONFIG.items():
        cmd += ["--dynamic-config-value", f"{key}={value}"]
    return cmd


async def connect(rig, identity: str | None = None, runtime=None):
    from temporalio.client import Client, TLSConfig

    work = rig.work
    target, namespace = address(rig)
    tls, api_key = False, None
    if work.temporal == "cluster":
        c = work.cluster
        if c.tls:
            tls = TLSConfig(server_root_ca_cert=open(c.ca_file, "rb").read()) if c.ca_file else True
        api_key = os.environ.get(c.api_key_env) if c.api_key_env else None
    try:
        client = await Client.connect(target, namespace=namespace, tls=tls, api_key=api_key, identity=identity,
                                      runtime=runtime)
    except RuntimeError as e:
        raise WorkError("temporal_unreachable", f"cannot reach Temporal at {target} ({namespace}): {e}; "
                        "is the temporal program running (supervisorctl status temporal)?") from None
    await _namespace_exists(client, target, namespace, work.temporal == "embedded")
    return client


async def _namespace_exists(client, target: str, namespace: str, embedded: bool) -> None:
    """A cluster answers before its namespace is made (docker-compose.yml's one-shot), and a
    worker started then would fail its validation and exit: the caller waits and says why. With
    the embedded server, a missing namespace means the server at the port is another rig's."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise failed_call(e, "describe the namespace") from None
        if embedded:
            raise WorkError("temporal_not_ours", f"the Temporal at {target} is not this rig's embedded server (it has "
                            f"no namespace {namespace!r}): another program holds work.embedded.port, or this rig's "
                            "temporal program has not started (supervisorctl status temporal)") from None
        raise WorkError("temporal_namespace_missing", f"Temporal at {target} has no namespace {namespace!r} (yet): "
                        f"create it (temporal operator namespace create -n {namespace} --address {target}), "
                        "or name one it has in work.cluster.namespace") from None


async def ensure_retention(client, work: WorkConfig) -> None:
    """The embedded server's namespace (the client's) keeps finished plans work.embedded.retention_h,
    not 24 h."""
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.namespace.v1 import NamespaceConfig
    from temporalio.api.workflowservice.v1 import UpdateNamespaceRequest

    hours = work.embedded.retention_h
    config = NamespaceConfig(workflow_execution_retention_ttl=Duration(seconds=hours * 3600))
    await client.workflow_service.update_namespace(
        UpdateNamespaceRequest(namespace=client.namespace, config=config))


def worker_identity(role: str, api_port: int) -> str:
    """work-gpu@host:apiport: names the rig (two bundles on one host differ by their API port)."""
    return f"{role}@{socket.gethostname()}:{api_port}:{os.getpid()}"


def timeout(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
