"""Where the compute API's CPU over the bare proxy goes: the compute API cut down, run beside
the whole one in interleaved passes (cpu_pairs.py), one run per cut, both with the
environment's key. A cut is this tree's src/ copied with a piece of the hot path replaced by
the bare proxy's own call (the body as it came, one content-type header each way, no
bookkeeping):

- bare: every routed request goes to the bare call at once: no key, no parsing, nothing of
  llamarig's but the process it runs in (its loops, timers and imports);
- front: the front door (the key, the body's cap and read, the JSON parse, the model's lookup,
  the validation), then the bare call;
- lease: the front door, the key's admission and the model's lease (and their ends), then the
  bare call.

Each cut's share is its ratio less the one before it; the whole tree's is the last. A cut
whose text is no longer in the source stops the run, naming it: update it here beside the
hot path.

    python bench/cut_pairs.py [PASSES [REQUESTS]] [--cuts bare,front,lease]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cpu_pairs
from common import ROOT

# Appended to openai_routes.py: the bare proxy's own post and app (bench/bare_proxy.py), on the
# API's upstream client; "m" is cpu_pairs' model. _Bare sends the answer as bare_proxy's app does.
BARE_CALL = '''

import sys as _sys
_sys.path.insert(0, BENCH)
import bare_proxy as _bare_proxy  # noqa: E402

_MADE = {}  # made once, as the bare proxy makes them: port -> post, and "app"


def _post(state, name):
    port = state.manager.rig.models[name].port
    if port not in _MADE:
        _MADE[port] = _bare_proxy.upstream_client(port, state.proxy.upstream)
    return _MADE[port]


def _bare_app(state):
    if "app" not in _MADE:
        _MADE["app"] = _bare_proxy.app_of(_post(state, "m"))
    return _MADE["app"]


async def _bare_call(state, name, path, body):
    return _Bare(*await _post(state, name)(path, body))


class _Bare:
    def __init__(self, status, data):
        self.status, self.data = status, data

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self.data))]})
        await send({"type": "http.response.body", "body": self.data})
'''.replace("BENCH", repr(str(ROOT / "bench")))
ROUTED_TAIL = '''    inputs = _inputs(data) if path == "/v1/embeddings" else 0
    return await route(state, scope, name, path, body, caller, data.get("stream") is True, inputs)'''
FASTPATH_HEAD = '''        path = scope["path"]
        group = route_group(path)'''

CUTS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "bare": {"api/compute/fastpath.py": [(FASTPATH_HEAD, '''        path = scope["path"]
        if scope["method"] == "POST" and path in openai_routes.ROUTED:
            return await openai_routes._bare_app(self.state)(scope, receive, send)
        group = route_group(path)''')]},
    "front": {"api/compute/openai_routes.py": [(ROUTED_TAIL, "    return await _bare_call(state, name, path, body)")]},
    "lease": {"api/compute/openai_routes.py": [(ROUTED_TAIL, '''    state.ledger.admit(caller, name)
    lease = state.manager.try_acquire(name) or await state.manager.acquire(name)
    try:
        return await _bare_call(state, name, path, body)
    finally:
        lease.release()
        state.ledger.end(caller, name, 200)''')]},
}


def cut_tree(name: str, folder: Path) -> Path:
    """A folder whose `llamarig` is this tree's src/ with cut `name` made."""
    src = folder / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    routes = src / "api/compute/openai_routes.py"
    routes.write_text(routes.read_text() + BARE_CALL)
    for relative, replacements in CUTS[name].items():
        path = src / relative
        text = path.read_text()
        for old, new in replacements:
            if old not in text:
                raise SystemExit(f"cut {name!r}: {relative} no longer has the text it replaces; update CUTS "
                                 f"in bench/cut_pairs.py:\n{old}")
            text = text.replace(old, new)
        path.write_text(text)
    (folder / "pkg").mkdir()
    (folder / "pkg" / "llamarig").symlink_to(src)
    return folder / "pkg"


def main(passes: int, requests: int, cuts: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llamarig-cut-pairs-"))
    rows = []
    for name in cuts:
        print(f"--- cut {name!r}", flush=True)
        code = cut_tree(name, folder / name)
        medians = cpu_pairs.main(passes, requests, f"cut {name}", named=False, code=code)
        rows.append((name, *medians["compute_api_before"], *medians["compute_api"]))
    print("\n| cut | CPU x the bare proxy's | p50 over it | this tree in the same run |\n| --- | --- | --- | --- |")
    for name, ratio, added, whole, whole_added in rows:
        print(f"| {name} | {ratio:.2f} | {added:+.3f} ms | {whole:.2f}, {whole_added:+.3f} ms |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("passes", nargs="?", type=int, default=7)
    p.add_argument("requests", nargs="?", type=int, default=1500)
    p.add_argument("--cuts", default=",".join(CUTS), help=f"some of {', '.join(CUTS)}, comma-separated")
    a = p.parse_args()
    unknown = set(a.cuts.split(",")) - set(CUTS)
    if unknown:
        p.error(f"no cut {', '.join(sorted(unknown))}; the cuts: {', '.join(CUTS)}")
    main(a.passes, a.requests, a.cuts.split(","))
