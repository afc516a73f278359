"""The files of a for_each task (work/map_workflow.py), in its folder tasks/TASK/attempt-1 under
the plan's: `output.items` (its items, one JSON string a line), `output.sNNN` (a slice's part of
the manifest) and `output.jsonl` (the manifest). Each is named to the workflow by reference
(path, where its rig serves it, sha256), like any output: a worker on another rig fetches it."""
from __future__ import annotations

import asyncio
import glob as globbing
import json
import shutil
from itertools import islice
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from llamarig.work import mapping, outputs, reuse
from llamarig.work.store import Store

ITEMS, MANIFEST = "output.items", "output.jsonl"


def resolve_glob(store: Store, plan_id: str, task: str, pattern: str, served_from: str) -> dict:
    """At submit: the files matching `pattern` on this rig, sorted, into the task's items file;
    its reference and count (the spec carries them, not the items)."""
    found = sorted(globbing.glob(pattern, recursive=True))
    folder = store.new_attempt(plan_id, task, 1)
    return write_items(folder, found, served_from)


def write_items(folder: Path, items: list[str], served_from: str) -> dict:
    path = folder / ITEMS
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    return _ref(path, folder, served_from) | {"count": len(items)}


def _ref(path: Path, folder: Path, served_from: str) -> dict:
    """The file as an output is named (mapping.OUTPUT_KEYS): its path, where this rig serves it."""
    return {"output": str(path)} | outputs.served(path, folder, served_from)


class MapFiles:
    def __init__(self, store: Store, fetch, served_from: str):
        """fetch(url, dest, sha256): api_client.ComputeApi.fetch_output."""
        self.store, self.fetch, self.served_from = store, fetch, served_from

    @activity.defn(name="map_items")
    async def map_items(self, job: dict) -> dict:
        """The task's items into its items file: {count, items: reference}."""
        folder = self.store.new_attempt(job["plan_id"], job["task"], 1)
        source = job["source"]
        if "file" in source:  # (a glob resolved at submit, or the items of a for_each dependency: items_of)
            path = await self._local(source["file"], folder / ITEMS)
            if path != folder / ITEMS:
                await asyncio.to_thread(shutil.copyfile, path, folder / ITEMS)
            return {"count": source["file"]["count"], "items": _ref(folder / ITEMS, folder, self.served_from)}
        items = source["items"] if "items" in source else await self._lines(job, folder)
        return {"count": len(items), "items": await asyncio.to_thread(write_items, folder, items, self.served_from)}

    async def _lines(self, job: dict, folder: Path) -> list[str]:
        ctx = await outputs.localize(job["ctx"], folder, self.fetch)
        dep = job["source"]["lines"]
        text = Path(ctx["outputs"][dep]).read_text(encoding="utf-8", errors="replace")
        items = [line.strip() for line in text.splitlines() if line.strip()]
        for number, item in enumerate(items):
            if len(item.encode()) > mapping.ITEM_BYTES:
                raise ApplicationError(f"for_each.lines: item {number} of @{dep}'s output is over {mapping.ITEM_BYTES} "
                                       "bytes: an item is a name or a path, not the data", type="DefinitionError",
                                       non_retryable=True)
        return items

    @activity.defn(name="read_items")
    async def read_items(self, job: dict) -> dict:
        """Items start..start+count, and the earlier plan's manifest lines of them that succeeded
        (job["reused"]: `llamarig retry` reuses those items)."""
        folder = self.store.new_attempt(job["plan_id"], job["task"], 1)
        path = await self._local(job["items"], folder / ITEMS)
        items = _lines(path, job["start"], job["count"], json.loads)
        got: dict = {"items": items, "zipped": {}}
        for dep, ref in job.get("zipped", {}).items():  # (@DEP[{index}]: the same items of a for_each dependency)
            manifest = await self._local(ref, folder / f"zipped-{dep}.jsonl")
            got["zipped"][dep] = _lines(manifest, job["start"], job["count"], json.loads)
        if job.get("reused"):
            old = await self._local(job["reused"], folder / "reused.jsonl")
            got["reused"] = [r for r in _lines(old, job["start"], job["count"], json.loads)
                             if r["state"] == "succeeded" and reuse.present_here(r, {})]
        return got

    @activity.defn(name="write_slice")
    async def write_slice(self, job: dict) -> dict:
        folder = self.store.new_attempt(job["plan_id"], job["task"], 1)
        path = folder / f"output.s{job['slice']}"
        await asyncio.to_thread(_write_file, path, job["records"])
        return _ref(path, folder, self.served_from)

    @activity.defn(name="join_manifest")
    async def join_manifest(self, job: dict) -> dict:
        """The slices' parts in item order into the manifest; a slice that wrote none (not run,
        or its workflow ended by the engine) gets a line per item saying so."""
        folder = self.store.new_attempt(job["plan_id"], job["task"], 1)
        manifest = folder / MANIFEST
        with open(manifest, "w", encoding="utf-8") as out:
            for part in job["parts"]:
                activity.heartbeat()
                if part.get("part"):
                    path = await self._local(part["part"], folder / f"output.s{part['start']}.copy")
                    out.write(path.read_text(encoding="utf-8"))
                    continue
                items = _lines(await self._local(job["items"], folder / ITEMS), part["start"], part["count"], json.loads)
                state = part.get("state", "failed")
                _write_lines(out, [{"index": i, "item": item, "state": state, "error": part.get("error", "")}
                                   for i, item in enumerate(items, start=part["start"])])
        return await asyncio.to_thread(_ref, manifest, folder, self.served_from)

    async def _local(self, ref: dict, dest: Path) -> Path:
        """The referenced file on this rig: where it is, else fetched to dest."""
        path = Path(ref["output"])
        if path.is_file():
            return path
        if not dest.is_file():
            await self.fetch(ref["output_url"], dest, ref["output_sha256"])
        return dest


def _lines(path: Path, start: int, count: int, parse) -> list:
    with open(path, encoding="utf-8") as f:
        return [parse(line) for line in islice(f, start, start + count)]


def _write_lines(out, records: list[dict]) -> None:
    out.writelines(json.dumps(r) + "\n" for r in records)


def _write_file(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        _write_lines(f, records)
