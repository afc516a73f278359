"""Who polls the rig's task queues, as Temporal sees them (DescribeTaskQueue), for
`llamarig status` and GET /admin/work: a queue nobody polls holds work that waits for no one
(the LlamarigQueueNoPoller alert)."""
from __future__ import annotations

import asyncio
import time

from llamarig.work import engine


async def describe(client, rig) -> dict:
    """{"temporal": {address, namespace}, "queues": {QUEUE: {"pollers": [{identity, seen_s_ago}]}}}."""
    address, namespace = engine.address(rig)
    names = engine.queues(rig.work)
    ordered = sorted({names["gpu"], names["cpu"]})
    answers = await asyncio.gather(*(_pollers(client, namespace, q) for q in ordered))  # (a slow engine: once)
    queues = {q: {"pollers": pollers} for q, pollers in zip(ordered, answers)}
    return {"temporal": {"address": address, "namespace": namespace}, "queues": queues}


async def _pollers(client, namespace: str, queue: str) -> list[dict]:
    """Each identity polling the queue for workflows or activities, with its latest poll."""
    from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    latest: dict[str, float] = {}
    kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    answers = await asyncio.gather(*(client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=namespace, task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=kind)) for kind in kinds))
    for answer in answers:
        for p in answer.pollers:
            latest[p.identity] = max(latest.get(p.identity, 0.0), p.last_access_time.ToMicroseconds() / 1e6)
    now = time.time()
    return [{"identity": who, "seen_s_ago": round(max(0.0, now - at), 1)} for who, at in sorted(latest.items())]
