"""`for_each`: one task run once per item (Airflow's `expand`, Argo's `withItems`/`withParam`).

An item is text. `{item}` and `{index}` (0-based) are put into `command`, `inputs`, `transcribe`,
`embed` and `generate.prompt`; in a command string (run by /bin/sh -c) `{item}` goes in quoted,
so a file name with spaces or quotes stays one argument: do not quote it yourself. The command
also gets LLAMARIG_ITEM and LLAMARIG_INDEX. Item `i` of task `t` runs as the task `t.i` (its
folder tasks/t.i/attempt-N), each with its own attempts and retries.

Its dependents get a manifest (`@t`): JSON lines in item order, one per item: index, item, state
(succeeded, failed, cancelled, not run), and the output's path, URL and sha256 where it
succeeded, or the error. `max_failed` (a count, or 'N%' of the items; null: 0) says how many
items may fail with the task still succeeded; past it, no more slices start and the task fails.
Pure functions: the workflows call them."""
from __future__ import annotations

import math
import re
import shlex

ITEM_BYTES = 1024  # an item rides in its activity's input and in its slice's history
PLACEHOLDERS = ("{item}", "{index}")
FAILED_SHARE = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")
FIELDS = ("command", "inputs", "transcribe", "embed", "generate")
INDEXED = re.compile(r"^@([a-z0-9][a-z0-9_-]{0,59})\[(\{index\}|\d+)\]$")  # @TASK[{index}]: an item's output


def problems(t, where: str) -> list[str]:
    """What is wrong with a task's for_each and max_failed (t: a plan.Task)."""
    if t.for_each is None:
        return [f"{where}.max_failed: only a task with for_each has items"] if t.max_failed is not None else []
    found = []
    for field in ("lines", "items_of"):
        ref = getattr(t.for_each, field)
        if ref is not None and ref[1:] not in t.depends_on:
            found.append(f"{where}.for_each.{field}: {ref} is not in depends_on")
    dumped = t.model_dump(include=set(FIELDS))
    if not any(p in repr(dumped) for p in PLACEHOLDERS):
        found.append(f"{where}.for_each: neither {{item}} nor {{index}} appears in command, inputs, transcribe, "
                     "embed or generate: every item would run the same thing")
    for i, item in enumerate(t.for_each.items or []):
        if len(str(item).encode()) > ITEM_BYTES:
            found.append(f"{where}.for_each.items.{i}: over {ITEM_BYTES} bytes: put long items in a file, one "
                         "a line, and use lines: @TASK")
            break
    if t.max_failed is not None and allowed_failures(t.max_failed, 100) is None:
        found.append(f"{where}.max_failed: {t.max_failed!r} is neither a count (0 or more) nor 'N%' (0 to 100)")
    return found


def allowed_failures(max_failed, count: int) -> int | None:
    """Items of `count` that may fail; None for a value that is neither a count nor 'N%'."""
    if max_failed is None:
        return 0
    if isinstance(max_failed, int) and not isinstance(max_failed, bool):
        return max_failed if max_failed >= 0 else None
    share = FAILED_SHARE.match(str(max_failed))
    if share is None or float(share.group(1)) > 100:
        return None
    return math.floor(count * float(share.group(1)) / 100)


def slices(count: int, size: int) -> list[tuple[int, int]]:
    """(first index, items) of each child workflow."""
    return [(start, min(size, count - start)) for start in range(0, count, size)]


def indexed_deps(t: dict) -> list[str]:
    """The for_each dependencies whose items' outputs `t` reads as @TASK[{index}]."""
    values = [*t.get("inputs", {}).values(), (t.get("transcribe") or {}).get("audio"), (t.get("embed") or {}).get("text")]
    return sorted({m.group(1) for v in values if (m := INDEXED.match(v or ""))})


def item_name(task: str, index: int) -> str:
    return f"{task}.{index}"


def substitute(t: dict, item: str, index: int) -> dict:
    """The task (a plan's model_dump) as item `index` runs it."""
    def put(text: str, quoted: bool = False) -> str:
        return text.replace("{item}", shlex.quote(item) if quoted else item).replace("{index}", str(index))

    one = {k: v for k, v in t.items() if k not in ("for_each", "max_failed")}
    one |= {"name": item_name(t["name"], index), "map": {"task": t["name"], "item": item, "index": index}}
    command = t.get("command")
    if isinstance(command, str):
        one["command"] = put(command, quoted=True)
    elif command is not None:
        one["command"] = [put(arg) for arg in command]
    one["inputs"] = {k: put(v) for k, v in t.get("inputs", {}).items()}
    for field in ("transcribe", "embed", "generate"):
        if t.get(field):
            one[field] = {k: put(v) if isinstance(v, str) else v for k, v in t[field].items()}
    return one


OUTPUT_KEYS = ("output", "output_url", "output_sha256")  # a reference to an output (work/outputs.py)


def output_of(result: dict) -> dict:
    """What a dependent needs of a result: where the output is."""
    return {k: result[k] for k in OUTPUT_KEYS if k in result}


def record(index: int, item: str, state: dict) -> dict:
    """An item's manifest line: where its output is, or why it has none."""
    line = {"index": index, "item": item, "state": state["state"]}
    result = state.get("result") or {}
    if state["state"] == "succeeded":
        line |= output_of(result) | ({"worker": result["worker"]} if "worker" in result else {})
        if "reused_from" in state:
            line["reused_from"] = state["reused_from"]
    elif state.get("error"):
        line["error"] = state["error"][-500:]
    return line
