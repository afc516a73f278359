"""Run the compute API. The lifecycle manager starts booting first; the web stack (FastAPI
and uvicorn: about 0.4 s of imports on the 2-core VM, measured) and the metrics
(prometheus_client) load in a thread meanwhile, so the first wave's servers are already loading
when the API begins to listen. This module imports neither itself; the events of the boot so
far are held for the metrics (jobs.HeldEvents)."""
from __future__ import annotations

import asyncio
import gc
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvloop

from llamarig.backend.lifecycle.jobs import Events, HeldEvents
from llamarig.backend.lifecycle.manager import Manager
from llamarig.backend.llama_http import ServerHttp
from llamarig.backend.supervisor import SupervisorClient
from llamarig.backend.supervisor_conf import socket_path
from llamarig.shared.rig import Rig
from llamarig.shared.tls import tls_files

if TYPE_CHECKING:
    from llamarig.api.compute.metrics import Metrics


def default_manager(rig: Rig, hooks: Events) -> Manager:
    return Manager(rig, SupervisorClient(socket_path(rig)), ServerHttp(), hooks=hooks)


@dataclass
class Started:
    """A manager already started (booting) before the app was built, with its metrics; the app
    serves it and closes it at shutdown."""
    manager: Manager
    metrics: Metrics


def serve(rig: Rig) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(rig))


async def _serve(rig: Rig) -> None:
    manager = default_manager(rig, HeldEvents())
    await manager.start()
    # Imports in a thread: the loop keeps running the boot (its waits are RPCs and HTTP polls).
    metrics_module = await asyncio.to_thread(importlib.import_module, "llamarig.api.compute.metrics")
    metrics = metrics_module.Metrics()
    manager.listen(metrics)
    app_module = await asyncio.to_thread(importlib.import_module, "llamarig.api.compute.app")
    uvicorn = await asyncio.to_thread(importlib.import_module, "uvicorn")
    app = app_module.create_app(rig, started=Started(manager, metrics))
    guarded = await asyncio.to_thread(importlib.import_module, "llamarig.api.compute.guarded_http")
    config = uvicorn.Config(app, host=rig.api.host, port=rig.api.port, log_config=None, access_log=False,
                            loop="none", http=guarded.guarded(rig.api.header_timeout_s), proxy_headers=False,
                            server_header=False, limit_concurrency=rig.api.max_connections,
                            # No websocket routes: "auto" imported a websockets implementation,
                            # 0.15 s at start on the 2-core VM (measured).
                            ws="none", interface="asgi3",
                            timeout_graceful_shutdown=int(rig.timeouts.drain_s) or None,
                            **_tls_settings(rig))
    gc.freeze()  # what the start made lives as long as the process: the collector's full passes skip it
    await uvicorn.Server(config).serve()


def _tls_settings(rig: Rig) -> dict:
    files = tls_files(rig)
    return {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)} if files else {}
