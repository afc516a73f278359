"""The compute API as the workers use it: transcriptions, embeddings and chat completions with
the rig's client key, the load of each model (from /ready), GPU leases, and task outputs other
rigs serve (with the operator key)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import httpx

from llamarig.shared.errors import LlamarigError


OUTPUT_CHECK_S = 10
GONE_CODES = {404: "output_not_found", 401: "invalid_api_key"}  # (a HEAD answer has no body to read them from)


class ApiRefused(LlamarigError):
    """The compute API answered with an error: its status, code and message are kept."""

    def __init__(self, code: str, reason: str, status: int | None = None):
        super().__init__(code, reason)
        self.status = status


def _refused(path: str, r: httpx.Response) -> ApiRefused:
    try:
        err = r.json()["error"]
        code, message = err.get("code") or str(r.status_code), f"{path}: {err.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = str(r.status_code), f"{path}: {r.text[:200]}"
    return ApiRefused(code, f"{r.status_code} {message}", r.status_code)


def origin(url: str) -> tuple[str, str, int]:
    u = httpx.URL(url)
    return u.scheme, u.host.lower(), u.port or (443 if u.scheme == "https" else 80)


ON_BEHALF_OF = "x-llamarig-on-behalf-of"


class ComputeApi:
    def __init__(self, base: str, key: str | None, timeout_s: float, operator_key: str | None = None,
                 key_origins: Iterable[str] = (), verify=True, peer_verify=True):
        """key_origins: the rigs besides `base` that may get the operator key with an output
        request (outputs.key_origins: this rig and work.peers); any other is refused unasked.
        verify: what `base` is trusted by (tls.loopback_trust); peer_verify: other rigs' (tls.peer_trust)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout_s, verify=verify)
        self.peers = httpx.AsyncClient(timeout=timeout_s, verify=peer_verify)  # (no key of its own)
        self.base_origin = origin(base)
        self.operator = {"Authorization": f"Bearer {operator_key}"} if operator_key else {}
        self.trusted = {origin(base), *(origin(u) for u in key_origins)}

    def _operator_for(self, url: str) -> dict:
        """The operator key's header for an output URL on a known rig; ApiRefused for any other."""
        try:
            known = origin(url) in self.trusted
        except (httpx.InvalidURL, TypeError):
            known = False
        if not known:
            raise ApiRefused("output_rig_unknown", f"{url}: the output is served by a rig this one does not know, "
                             "and the operator key goes only to known rigs: add that rig's work.outputs_url to "
                             "work.peers (the rig file of the rig that runs this task)", 403)
        return self.operator

    async def close(self) -> None:
        await self.http.aclose()
        await self.peers.aclose()

    def _client_for(self, url: str) -> httpx.AsyncClient:
        """This rig's client for its own URLs; the peers' (host names checked) for another rig's."""
        try:
            return self.http if origin(url) == self.base_origin else self.peers
        except (httpx.InvalidURL, TypeError):
            return self.peers

    async def _post(self, path: str, **kw) -> httpx.Response:
        try:
            r = await self.http.post(path, **kw)
        except httpx.TransportError as e:
            raise ApiRefused("api_unreachable", f"{path}: {type(e).__name__}: {e}: the compute API at "
                             f"{self.http.base_url} dropped or refused the request (restarting?)") from None
        if r.status_code >= 400:
            raise _refused(path, r)
        return r

    async def fetch_output(self, url: str, dest: Path, sha256: str) -> None:
        """A task output another rig's compute API serves (work/outputs.py), into dest, checked
        against its sha256; an unreachable rig or a damaged copy is retryable, a 4xx is not."""
        digest = hashlib.sha256()
        try:
            async with self._client_for(url).stream("GET", url, headers=self._operator_for(url)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise _refused(url, r)
                with open(dest, "wb") as f:
                    async for chunk in r.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.TransportError as e:
            raise ApiRefused("output_unreachable", f"{url}: {type(e).__name__}: the rig that made this output does "
                             "not answer (down, or its work.outputs_url is not reachable from here)") from None
        if digest.hexdigest() != sha256:
            dest.unlink()
            raise ApiRefused("output_damaged", f"{url}: the copy's sha256 differs from the one its task recorded")

    async def output_gone(self, url: str) -> ApiRefused | None:
        """Why a served output (work/outputs.py) cannot be fetched now; None while it can."""
        try:
            headers = self._operator_for(url)
        except ApiRefused as e:
            return e
        try:
            r = await self._client_for(url).head(url, headers=headers, timeout=OUTPUT_CHECK_S)
        except httpx.TransportError as e:
            return ApiRefused("output_unreachable", f"{url}: {type(e).__name__}: the rig that made it does not answer")
        if r.status_code < 400:
            return None
        return ApiRefused(GONE_CODES.get(r.status_code, str(r.status_code)), f"{r.status_code} {url}", r.status_code)

    async def transcribe(self, audio: Path, response_format: str, language: str | None) -> str:
        data = {"model": "whisper-1", "response_format": response_format} | ({"language": language} if language else {})
        with audio.open("rb") as f:
            r = await self._post("/v1/audio/transcriptions", files={"file": (audio.name, f)}, data=data)
        return r.text

    async def embed(self, model: str, lines: list[str]) -> list[list[float]]:
        r = await self._post("/v1/embeddings", json={"model": model, "input": lines})
        return [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]

    async def chat(self, model: str, messages: list[dict], max_tokens: int, temperature: float,
                   on_behalf_of: str | None = None) -> dict:
        """on_behalf_of: the key name that submitted the plan; the API counts the request against
        that key (its usage and limits) when it comes with a key the workers hold."""
        headers = {ON_BEHALF_OF: on_behalf_of} if on_behalf_of else None
        r = await self._post("/v1/chat/completions", headers=headers,
                             json={"model": model, "messages": messages, "max_tokens": max_tokens,
                                   "temperature": temperature})
        body = r.json()
        usage = body.get("usage") or {}
        return {"text": body["choices"][0]["message"]["content"] or "", "tokens": usage.get("completion_tokens"),
                "prompt_tokens": usage.get("prompt_tokens")}

    async def ready_body(self) -> dict:
        """/ready's body, 200 or 503 alike: each unit's state and load, the GPU modes."""
        return (await self.http.get("/ready", timeout=5)).json()

    async def load(self) -> dict[str, dict]:
        """Each unit's state, requests in flight and waiting."""
        return (await self.ready_body()).get("components", {})

    async def take_gpu(self, holder: str, ttl_s: float) -> dict:
        """A whole GPU (operator route); ApiRefused with status 503 while none can be lent."""
        return (await self._post("/admin/gpus/lease", json={"holder": holder, "ttl_s": ttl_s},
                                 headers=self.operator)).json()

    async def renew_gpu(self, lease_id: str) -> None:
        await self._post(f"/admin/gpus/lease/{lease_id}/renew", headers=self.operator)

    async def return_gpu(self, lease_id: str, reason: str) -> None:
        await self.http.delete(f"/admin/gpus/lease/{lease_id}", params={"reason": reason}, headers=self.operator)
