"""The console (GET /console): a read-only page of the rig's state for a person, served as one
checked-in file (console/index.html: no build step, nothing fetched from the network). The page
signs in with an operator key sent once through its form (POST /console/login) and kept in an
HttpOnly, SameSite=Strict cookie (Secure under TLS); with that cookie the browser may read the
/admin routes (GET only: the cookie never authorises a change, so no other site can make the
browser change anything). /console/logout forgets it."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from llamarig.api.compute import limits

PAGE = Path(__file__).with_name("console") / "index.html"
COOKIE = "llamarig_console"
FORM_BYTES = 4096


def build_router(state, ring, secure: bool) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page = PAGE.read_text()

    @router.get("/console")
    async def console() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    @router.post("/console/login")
    async def login(request: Request) -> Response:
        try:
            body = await limits.read_body(request.receive, FORM_BYTES, state.rig.api.body_timeout_s, "login form")
        except limits.BodyRefused as e:
            return e.response()
        key = urllib.parse.parse_qs(body.decode(errors="replace")).get("key", [""])[0].strip()
        owner = ring.identify(key.encode()) if key else None
        done = RedirectResponse("/console", status_code=303)
        if owner is not None and owner.scope == "operator" and not ring.refusal(owner, 0):
            done.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=secure, path="/")
            state.audit.write(owner.name, "POST /console/login", "console", "303")
        else:
            state.audit.write("(unknown)", "POST /console/login", "console", "refused")
        return done

    @router.get("/console/logout")
    async def logout() -> Response:
        done = RedirectResponse("/console", status_code=303)
        done.delete_cookie(COOKIE, path="/")
        return done

    return router
