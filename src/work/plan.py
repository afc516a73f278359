"""A plan: a YAML file of tasks with dependencies, validated whole before anything is submitted.

Each error names the task and the field (`tasks.segment.depends_on: ...`). A task without a
class is refused with the class its command suggests; `--infer-class` applies the suggestion and
records it on the task (`class_inferred: true`).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llamarig.shared.errors import LlamarigError
from llamarig.work import mapping

TASK_NAME = r"^[a-z0-9][a-z0-9_-]{0,59}$"
MAX_TASKS = 5000
TASK_LITERAL_BYTES = 16 * 1024
MAX_LITERAL_ITEMS = 10_000
CLASSES = ("cpu", "script", "llm")
# What a command's text suggests, first match wins ("whisper" before "generate").
HINTS = (("script", ("whisper", "transcrib", "embed", "cuda", "gpu")), ("llm", ("generate", "llm")))
# An input naming a dependency's output file; @TASK[{index}] in a for_each task: the output of the same
# item of a for_each dependency (work/mapping.py).
REFERENCE = re.compile(r"^@([a-z0-9][a-z0-9_-]{0,59})(\[\{index\}\])?$")


class PlanError(LlamarigError):
    """The plan is invalid; `problems` holds one 'tasks.NAME.field: message' line per fault."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__("plan_invalid", f"{source}: " + "; ".join(problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Transcribe(Strict):
    audio: str = Field(description="Audio file path, or @TASK for a dependency's output file.")
    format: Literal["json", "srt", "text"] = Field("json", description="What the output file holds.")
    language: str | None = Field(None, description="Language code; null: detected.")


class Embed(Strict):
    text: str = Field(description="File of text lines (one vector each), or @TASK.")
    model: str | None = Field(None, description="Embeddings model of the rig; null: the only one.")


class Generate(Strict):
    prompt: str = Field(description="The instruction. Inputs are appended as data blocks; untrusted ones "
                        "are spotlighted (see prompts.py).")
    model: str | None = Field(None, description="Model name; or leave it out and set executor.")
    executor: Literal["brain", "worker"] | None = Field(None, description="brain: the rig's unswitchable "
                                                       "LLM; worker: the least busy switchable one.")
    max_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0, le=2)

    @model_validator(mode="after")
    def _one_target(self):
        if (self.model is None) == (self.executor is None):
            raise ValueError("set exactly one of model and executor")
        return self


class Escalate(Strict):
    after_failures: int = Field(ge=1, le=100, description="Local attempts that failed before the next attempt goes "
                                "to the escalation tier (work.external) with the task and their errors.")


class ForEach(Strict):
    items: list[str | int | float] | None = Field(None, max_length=MAX_LITERAL_ITEMS, description="The items "
                                                 "themselves (up to 10,000; more: glob or lines).")
    glob: str | None = Field(None, description="Files matching this pattern on the rig, resolved when the plan "
                             "is submitted (sorted; ** recurses); none matching is refused.")
    lines: str | None = Field(None, description="@TASK: the non-blank lines of that dependency's output, read "
                              "when it ends.")
    items_of: str | None = Field(None, description="@TASK: the items of that for_each dependency, index for "
                                 "index (with inputs of @TASK[{index}]: a batch's next step per item).")

    @model_validator(mode="after")
    def _one_source(self):
        if sum(v is not None for v in (self.items, self.glob, self.lines, self.items_of)) != 1:
            raise ValueError("set exactly one of items, glob, lines and items_of")
        for field in ("lines", "items_of"):
            value = getattr(self, field)
            if value is not None and not ((ref := REFERENCE.match(value)) and not ref.group(2)):
                raise ValueError(f"{field}: {value!r} is not @TASK (a dependency)")
        return self


class Task(Strict):
    name: str = Field(pattern=TASK_NAME)
    cls: Literal["cpu", "script", "llm"] | None = Field(None, alias="class")
    class_inferred: bool = False
    command: list[str] | str | None = Field(None, description="A program and its arguments (a string runs "
                                            "through /bin/sh -c).")
    transcribe: Transcribe | None = None
    embed: Embed | None = None
    generate: Generate | None = None
    depends_on: list[str] = Field(default_factory=list)
    priority: int = Field(5, ge=1, le=10, description="1 to 10; 10 most urgent.")
    retries: int | None = Field(None, ge=0, le=100, description="Retries after a failed attempt; null: "
                                "work.retries.")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400, description="Seconds one attempt may run; "
                                    "null: work.task_timeout_s.")
    expected_s: float | None = Field(None, gt=0, le=7 * 86400, description="Seconds one attempt usually "
                                     "runs; orders tasks of one priority, most work left after them first "
                                     "(priority.py). null: what this rig learned for the same task "
                                     "(durations.py), else the mean of the plan's known ones.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Named values: text, or @TASK (a "
                                   "dependency's output file).")
    untrusted: list[str] = Field(default_factory=list, description="Names of inputs that are data from "
                                 "outside: they go to an llm task only inside a marked data block.")
    escalate: Escalate | None = Field(None, description="An llm task: after this many failed local attempts, "
                                      "the next ones ask the escalation tier (work.external); its answer is the output.")
    external: bool | None = Field(None, description="An llm task: true: asked of the escalation tier only, never "
                                  "a local model.")
    sensitive: bool = Field(False, description="true: an llm task's messages and answer are never kept in the "
                            "training-sample log (work.samples), whatever the rig says.")
    for_each: ForEach | None = Field(None, description="Run the task once per item, {item} and {index} "
                                     "substituted (work/mapping.py); its dependents get a manifest.")
    max_failed: int | str | None = Field(None, description="With for_each: items that may fail (a count, or "
                                         "'N%' of the items) with the task still succeeded; null: 0.")

    def what(self) -> str | None:
        """Which of command, transcribe, embed, generate the task sets (None: none or several)."""
        set_ = [k for k in ("command", "transcribe", "embed", "generate") if getattr(self, k) is not None]
        return set_[0] if len(set_) == 1 else None


class Plan(Strict):
    name: str = Field(pattern=TASK_NAME)
    # Its history holds about 5 events a task (more with retries); Temporal ends a workflow at
    # 51,200 events. Larger work: several plans.
    tasks: list[Task] = Field(min_length=1, max_length=MAX_TASKS)


def suggest_class(task: dict) -> str:
    """The class a task's command suggests: script, llm, else cpu."""
    if "transcribe" in task or "embed" in task:
        return "script"
    if "generate" in task:
        return "llm"
    text = str(task.get("command", "")).lower()
    return next((cls for cls, words in HINTS if any(w in text for w in words)), "cpu")


def load_plan(path: str, infer_class: bool = False, models: set[str] | None = None,
              external: bool | None = None, default_retries: int | None = None) -> Plan:
    """A plan file: JSON where its name ends in .json, else YAML. A syntax error is one line: the
    file, the line and column, what the parser found and expected."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except OSError as e:
        raise PlanError(path, [f"(file): cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise PlanError(path, [f"(file): not UTF-8 text (byte {e.start}: {e.reason})"]) from None
    except json.JSONDecodeError as e:
        raise PlanError(path, [f"(json) line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    except yaml.YAMLError as e:
        raise PlanError(path, [_yaml_syntax(e)]) from None
    return parse_plan(data, path, infer_class, models, external, default_retries)


def _yaml_syntax(e: yaml.YAMLError) -> str:
    """PyYAML's two or three lines as one: where, what was found, in what (begun where)."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return "(yaml) " + " ".join(str(e).split())
    what = getattr(e, "problem", None) or "syntax error"
    within, begun = getattr(e, "context", None), getattr(e, "context_mark", None)
    if within and begun is not None and begun.line != mark.line:
        within += f" begun at line {begun.line + 1}, column {begun.column + 1}"
    return f"(yaml) line {mark.line + 1}, column {mark.column + 1}: {what}" + (f" ({within})" if within else "")


def parse_plan(data: object, source: str, infer_class: bool = False, models: set[str] | None = None,
               external: bool | None = None, default_retries: int | None = None) -> Plan:
    """Validate a plan; `models`: the rig's model names, `external`: whether it has an escalation
    tier, `default_retries`: its work.retries (None: not checked)."""
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise PlanError(source, ["(top): a plan is a mapping with name and a list of tasks"])
    problems = _classes(data["tasks"], infer_class)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        raise PlanError(source, problems + [_where(data, err) for err in e.errors()]) from None
    problems += _cross_check(plan, models) + _escalation_problems(plan, external, default_retries)
    if problems:
        raise PlanError(source, problems)
    return plan


def _classes(tasks: list, infer: bool) -> list[str]:
    problems = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or task.get("class") is not None:
            continue
        guess = suggest_class(task)
        if infer:
            task.update({"class": guess, "class_inferred": True})
        else:
            problems.append(f"tasks.{task.get('name', i)}.class: missing; its command suggests '{guess}' "
                            "(set it, or submit with --infer-class)")
    return problems


def _where(data: dict, err: dict) -> str:
    loc = list(err["loc"])
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        task = data["tasks"][loc[1]]
        loc[1] = task.get("name", loc[1]) if isinstance(task, dict) else loc[1]
    msg = "unknown field" if err["type"] == "extra_forbidden" else re.sub(r"^Value error, ", "", err["msg"])
    return ".".join(map(str, loc)) + f": {msg}"


def _cross_check(plan: Plan, models: set[str] | None) -> list[str]:
    counts = Counter(t.name for t in plan.tasks)
    problems = [f"tasks.{n}.name: appears twice" for n in sorted(n for n, c in counts.items() if c > 1)]
    names, mapped = set(counts), {t.name for t in plan.tasks if t.for_each}
    for t in plan.tasks:
        problems += _task_problems(t, names, models, mapped)
    return problems + _cycles(plan)


def _task_problems(t: Task, names: set[str], models: set[str] | None, mapped: set[str]) -> list[str]:
    """mapped: the plan's for_each tasks."""
    where, what = f"tasks.{t.name}", t.what()
    problems = [f"{where}.depends_on: unknown task '{d}'" for d in t.depends_on if d not in names]
    if what is None:
        problems.append(f"{where}: set exactly one of command, transcribe, embed, generate")
    elif t.cls is not None and {"command": t.cls in ("cpu", "script"), "transcribe": t.cls == "script", "embed": t.cls == "script",
          "generate": t.cls == "llm"}[what] is False:
        problems.append(f"{where}.class: '{t.cls}' cannot run {what}")
    referring = [(f"inputs.{key}", value) for key, value in t.inputs.items()]
    referring += [("transcribe.audio", t.transcribe and t.transcribe.audio), ("embed.text", t.embed and t.embed.text)]
    for field, value in referring:
        ref = REFERENCE.match(value or "")
        if ref and ref.group(1) not in t.depends_on:
            problems.append(f"{where}.{field}: {value} is not in depends_on")
        elif ref and ref.group(2) and (t.for_each is None or ref.group(1) not in mapped):
            problems.append(f"{where}.{field}: {value} names an item's output: it needs a for_each task that "
                            f"depends on a for_each task")
    of = t.for_each and t.for_each.items_of
    if of and of[1:] in t.depends_on and of[1:] not in mapped:
        problems.append(f"{where}.for_each.items_of: {of} has no items: it is not a for_each task")
    if t.expected_s and t.timeout_s and t.expected_s > t.timeout_s:
        problems.append(f"{where}.expected_s: {t.expected_s:g} s is longer than its timeout_s ({t.timeout_s:g} s)")
    problems += [f"{where}.untrusted: '{u}' is not an input" for u in t.untrusted if u not in t.inputs]
    target = (t.generate and t.generate.model) or (t.embed and t.embed.model)
    if models is not None and target and target not in models:
        problems.append(f"{where}.{what}.model: unknown model '{target}' (the rig has {', '.join(sorted(models))})")
    return problems + _literal_problems(t, where) + mapping.problems(t, where)


def _escalation_problems(plan: Plan, external: bool | None, default_retries: int | None) -> list[str]:
    problems = []
    for t in plan.tasks:
        where, asks = f"tasks.{t.name}", "external" if t.external else "escalate" if t.escalate else None
        if asks is None:
            continue
        if t.what() != "generate":
            problems.append(f"{where}.{asks}: only an llm task (generate) can ask the escalation tier")
        elif t.external and t.escalate:
            problems.append(f"{where}.escalate: external: true never runs locally; set one of them")
        elif t.escalate and (retries := _or(t.retries, default_retries)) is not None \
                and t.escalate.after_failures > retries:
            problems.append(f"{where}.escalate.after_failures: {t.escalate.after_failures} local failures leave no "
                            f"attempt for the tier with retries {retries} (set retries to after_failures or more)")
        elif external is False:
            problems.append(f"{where}.{asks}: this rig has no escalation tier (work.external)")
    return problems


def _or(value, default):
    return default if value is None else value


def _literal_problems(t: Task, where: str) -> list[str]:
    """A task's literal text (its command, prompt, inputs) rides in every attempt's activity
    input: capped, so that a window of tasks scheduled at once stays far inside the engine's
    message limit (plan_window x TASK_LITERAL_BYTES: 1 MiB at the default 64)."""
    literals = [t.command if isinstance(t.command, str) else " ".join(t.command or []),
                t.generate.prompt if t.generate else "", *t.inputs.values()]
    size = sum(len(text.encode()) for text in literals)
    if size <= TASK_LITERAL_BYTES:
        return []
    return [f"{where}: {size} bytes of literal text (command, prompt, inputs) over the {TASK_LITERAL_BYTES} a task "
            "may carry: put long text in a file a task reads (an input of @TASK, or a path)"]


def _cycles(plan: Plan) -> list[str]:
    """The first cycle met, depth first. Without recursion: a plan of thousands of tasks listed
    dependents first went that deep (a RecursionError at 2000)."""
    deps = {t.name: t.depends_on for t in plan.tasks}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for root in deps:
        if state.get(root):
            continue
        path, stack = [root], [iter(deps[root])]
        state[root] = 1
        while stack:
            d = next(stack[-1], None)
            if d is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                return [f"tasks.{cycle[0]}.depends_on: cycle {' -> '.join(cycle)}"]
            elif d in deps and not state.get(d):
                state[d] = 1
                path.append(d)
                stack.append(iter(deps[d]))
    return []
