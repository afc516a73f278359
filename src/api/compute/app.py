"""The compute API: `create_app(rig)` builds everything it needs; no module globals."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from types import SimpleNamespace

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from llamarig.api.compute import (admin_routes, errors, openai_routes, openapi, output_routes, plan_routes,
                                  console_routes, team_routes)
from llamarig.api.compute.model_limits import ModelLimitsCache
from llamarig.api.compute.metrics import Metrics
from llamarig.api.compute.metrics_merge import merge
from llamarig.api.compute.fastpath import FastPath
from llamarig.api.compute.keyring import KeyRing
from llamarig.api.compute.ledger import Ledger
from llamarig.api.compute.proxy import Proxy
from llamarig.backend.upstream import Upstream
from llamarig.api.compute.serve import Started, default_manager
from llamarig.backend.lifecycle.manager import UnknownModel
from llamarig.shared.api_errors import error_response
from llamarig.shared.audit import AuditLog
from llamarig.shared.keys import load_keys
from llamarig.shared.keystore import KeyStore
from llamarig.shared.tls import tls_files
from llamarig.shared.usage_store import UsageStore
from llamarig.shared.rig import Rig
from llamarig.work.processes import of_rig

VERSION = "0.1.0"
DESCRIPTION = ("OpenAI-compatible compute API of a llamarig bundle. Keys: a client key for /v1/* and the "
               "docs, the operator key for every route; /health, /ready and /metrics open unless the rig "
               "says otherwise. Errors: {\"error\": {\"message\", \"type\", \"code\", \"param\"}}.")


def work_metric_ports(rig: Rig) -> dict[str, list[int]]:
    """gpu, cpu (one port per worker process, in process order), temporal: the loopback ports
    behind /metrics/work/NAME."""
    w = rig.work
    if w is None:
        return {}
    ports = {"gpu": [], "cpu": [], "temporal": [w.embedded.metrics_port] if w.temporal == "embedded" else []}
    for proc in of_rig(rig):
        ports[proc.role].append(w.metrics_port_of(proc.role, proc.index))
    return {name: found for name, found in ports.items() if found and 0 not in found}  # 0: none


def create_app(rig: Rig, manager_factory=None, started: Started | None = None) -> FastPath:
    """manager_factory(rig, metrics) -> Manager; tests may pass their own. With
    `started`, the app serves that running manager instead of making and starting one."""
    state = SimpleNamespace(rig=rig, manager=None, proxy=None, metrics=started.metrics if started else Metrics(),
                            model_limits=ModelLimitsCache())
    keys = load_keys(rig)
    ring = KeyRing(keys, KeyStore(rig.run_dir))
    state.ledger = Ledger(UsageStore(rig.run_dir, keep_open=True), state.metrics.registry)
    state.audit = AuditLog(rig.run_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        upstream = Upstream()
        if started:
            state.manager = started.manager
        else:
            state.manager = (manager_factory or default_manager)(rig, state.metrics)
            await state.manager.start()
        state.metrics.attach(state.manager)
        state.proxy = Proxy(upstream)
        chores = [asyncio.ensure_future(ring.watch()), asyncio.ensure_future(state.ledger.flush_every())]
        yield
        await state.manager.drain_requests()
        await state.manager.close()
        for chore in chores:
            chore.cancel()
        await state.ledger.flush()  # a clean stop loses no usage
        state.ledger.store.close()
        upstream.close()

    app = FastAPI(title="llamarig compute API", version=VERSION, lifespan=lifespan, description=DESCRIPTION)
    app.state.llamarig = state
    errors.install(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok, rows = state.manager.ready_report()
        inv = state.manager.inventory
        modes = {str(g): m.mode.value for g, m in state.manager.modes.gpus.items()}
        body = {"ready": ok, "gpus": {"simulated": inv.simulated, "reason": inv.reason, "modes": modes},
                "booted": state.manager.booted.is_set(),
                "components": {r["name"]: {k: r[k] for k in ("state", "reason", "required", "warm", "gpus", "inflight",
                                                           "waiting", "held")}
                               for r in rows}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/engines/{name}")
    async def engine_metrics(name: str) -> Response:
        """The engine's own metrics (llama-server `llamacpp:*`), passed through unchanged from
        the server now serving `name`. Read straight from the server: not a request, not activity."""
        try:
            actor = state.manager.actor(name)
        except UnknownModel as e:
            return error_response(404, e.code, e.reason, "name")
        unit = actor.unit
        if not unit.metrics_path:
            return error_response(404, "no_engine_metrics", f"the engine of {name!r} exports no metrics "
                                  "(llama-cpp-python has none); llamarig_* metrics still cover it")
        return await _pass_metrics(unit.port, unit.metrics_path, f"{name!r} is {actor.state.value}; its server")

    @app.get("/metrics/work/{name}")
    async def work_metrics(name: str) -> Response:
        """The work layer's own metrics, passed through unchanged from loopback: `gpu` and `cpu`
        (each worker's SDK metrics and llamarig_task_*), `temporal` (the embedded server's). With
        work.cpu_processes above 1, `cpu` is all of them, each sample labelled process="i", and
        503 only when none answers (metrics_merge.py)."""
        ports = work_metric_ports(rig)
        if name not in ports:
            return error_response(404, "no_work_metrics", f"no metrics named {name!r}: this rig exports "
                                  f"{sorted(ports) or 'none'} (work.metrics_port_gpu, metrics_port_cpu, "
                                  "embedded.metrics_port)", "name")
        if len(ports[name]) == 1:
            return await _pass_metrics(ports[name][0], "/metrics", f"work {name!r}")
        answers = await asyncio.gather(*(_pass_metrics(port, "/metrics", f"work {name!r} process {i}")
                                         for i, port in enumerate(ports[name])))  # a hung one costs its 5 s once
        if all(a.status_code != 200 for a in answers):
            return answers[0]
        return Response(merge([a.body if a.status_code == 200 else None for a in answers]),
                        media_type=CONTENT_TYPE_LATEST)

    async def _pass_metrics(port: int, path: str, what: str) -> Response:
        try:
            async with asyncio.timeout(5):
                answer = await state.proxy.upstream.request("GET", port, path, [], b"")
                try:
                    body = await answer.read()
                finally:
                    answer.close()
        except OSError as e:  # refused, closed, or timed out (TimeoutError is an OSError)
            return error_response(503, "engine_unreachable", f"{what} on port {port} did not answer "
                                  f"({type(e).__name__})", retry_after=5)
        return Response(body, status_code=answer.status, media_type=CONTENT_TYPE_LATEST)

    app.include_router(openai_routes.build_router(state))
    app.include_router(admin_routes.build_router(state))
    app.include_router(team_routes.build_router(state, rig.run_dir))
    app.include_router(console_routes.build_router(state, ring, secure=tls_files(rig) is not None))
    link = plan_routes.TemporalLink(rig) if rig.work else None  # one Temporal client for both
    app.include_router(plan_routes.build_router(state, rig, link, keys.operator))
    app.include_router(plan_routes.build_work_router(rig, link))
    if rig.work:
        app.include_router(output_routes.build_router(rig))
    # Outside FastAPI's own middleware stack: the hot path pays for none of it.
    front = FastPath(app, state, ring, rig.api.keys.open_routes, state.audit)
    openapi.install(app, state, front.open)
    return front
