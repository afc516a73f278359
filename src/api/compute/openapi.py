"""/openapi.json: FastAPI's own description of its routes, with the fast path's request
bodies, the two bearer keys and, on every route that needs one, which key it takes."""
from __future__ import annotations

from fastapi.openapi.utils import get_openapi

from llamarig.api.compute import schemas
from llamarig.api.compute.fastpath import route_group


def _error(description: str) -> dict:
    """An OpenAPI response whose body is the OpenAI error shape."""
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


SCHEMES = {
    "ClientKey": {"type": "http", "scheme": "bearer", "description": "A client key: /v1/* and the docs."},
    "OperatorKey": {"type": "http", "scheme": "bearer", "description": "The operator key: every route."},
}


def _security(group: str, open_groups: set[str]) -> list[dict]:
    if group in open_groups:
        return []
    return [{"OperatorKey": []}] if group == "operator" else [{"ClientKey": []}, {"OperatorKey": []}]


def install(app, state, open_groups: set[str]) -> None:
    """Replace app.openapi with one that adds what the fast path serves."""
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {})
        found = components.setdefault("schemas", {})
        rig = state.manager.rig if state.manager else state.rig
        for model in schemas.requests(rig, state.model_limits.smallest_vocab(rig)) + [schemas.ErrorBody]:
            spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
            found.update(spec.pop("$defs", {}))
            found[model.__name__] = spec
        components["securitySchemes"] = SCHEMES
        for path, operations in doc["paths"].items():
            security = _security(route_group(path), open_groups)
            for operation in operations.values():
                operation["security"] = security
                if operation["responses"].pop("422", None):  # errors.py answers these 400, OpenAI-shaped
                    operation["responses"]["400"] = _error("A bad path or query parameter.")
                if security:
                    operation["responses"].setdefault("401", _error("A missing or wrong key."))
        for unused in ("HTTPValidationError", "ValidationError"):
            found.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
