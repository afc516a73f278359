"""The activities a worker runs, by class: cpu (a command, no GPU visible), script (transcribe
and embed through the services the planner places), llm (generate through the compute API),
and record_plan (a plan's summary under the run folder). Each logs one JSON line per task event
with the seed's fields and counts it in llamarig_task_* (through the SDK's own meter, so they
share its /metrics)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from llamarig.shared import gpus
from llamarig.shared.keys import load_keys
from llamarig.work import commands, durations, outputs, plan_usage, prompts, samples
from llamarig.work.api_client import ApiRefused, ComputeApi
from llamarig.work.escalation import Escalation
from llamarig.work.external import Tier
from llamarig.work.processes import WorkerProcess
from llamarig.work.store import Store
from llamarig.work.workflow import PLAN_CANCELLED

log = logging.getLogger("llamarig.work")


def definition_error(message: str) -> ApplicationError:
    return ApplicationError(message, type="DefinitionError", non_retryable=True)


class Activities:
    def __init__(self, rig, proc: WorkerProcess, identity: str, api: ComputeApi, meter=None):
        self.rig, self.role, self.identity, self.api = rig, proc.role, identity, api
        self.store = Store(rig.run_dir)
        self.owner = task_owner(rig, proc.key)
        w = rig.work
        self.limits = {"script": asyncio.Semaphore(max(1, w.concurrency.script)),  # (0: refused in _takes)
                       "llm": asyncio.Semaphore(max(1, w.concurrency.llm))}
        self.beat_every = w.heartbeat_timeout_s / 3
        self.served_from = outputs.base_url(rig)
        secrets = rig_secrets(rig)  # (read once: the sample log and the tier both keep them out)
        self.samples = samples.SampleLog.of(rig, secrets)
        self.nvml = gpus.nvml_only(rig.gpus) if proc.role == "gpu" else None  # (a leased command's VRAM peak)
        tier = Tier.of(rig, secrets, w.cpu_processes) if proc.role == "cpu" else None
        self.escalation = tier and Escalation(rig, tier, meter)  # (an attempt that asks it needs no GPU: work-cpu)
        self.counted = meter and (
            meter.create_counter("llamarig_tasks_total", "Task attempts ended, by class, outcome and GPU"),
            meter.create_histogram_float("llamarig_task_seconds", "Seconds a task attempt ran", "s"))

    # ---- the classes -----------------------------------------------------------------------------
    @activity.defn(name="run_cpu")
    async def run_cpu(self, task: dict, ctx: dict) -> dict:
        return await self._run(task, ctx, self._command)

    @activity.defn(name="run_script")
    async def run_script(self, task: dict, ctx: dict) -> dict:
        self._takes("script")
        async with self._limited("script"):
            if task.get("command") is not None:
                return await self._run(task, ctx, self._gpu_command)
            work = self._transcribe if task.get("transcribe") else self._embed
            return await self._run(task, ctx, work)

    @activity.defn(name="run_llm")
    async def run_llm(self, task: dict, ctx: dict) -> dict:
        self._takes("llm")
        async with self._limited("llm"):
            return await self._sampled(task, ctx, self._generate)

    @activity.defn(name="run_external")
    async def run_external(self, task: dict, ctx: dict) -> dict:
        """An llm attempt that asks the escalation tier (escalation.asks_tier): on work-cpu, since
        it needs no GPU and no local model serving."""
        return await self._sampled(task, ctx, self._escalate)

    async def _sampled(self, task: dict, ctx: dict, work) -> dict:
        """An llm attempt whose messages and answer go to the training-sample log (where the rig
        keeps one and the task is not sensitive), however it ends."""
        if self.samples is None or task.get("sensitive"):
            return await self._run(task, ctx, work)
        seen, began, outcome, error = {}, time.monotonic(), "failed", None
        try:
            result = await self._run(task, ctx, lambda t, c, f: work(t, c, f, seen))
            outcome = "succeeded"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ApplicationError as e:
            outcome, error = ("cancelled" if e.type == PLAN_CANCELLED else "failed"), e.message
            raise
        finally:
            if "messages" in seen:
                self.samples.write(samples.record(task, ctx, seen, outcome, error, _ms(began)))

    @activity.defn(name="record_plan")
    async def record_plan(self, summary: dict) -> str:
        path = self.store.write_record(summary["plan_id"], summary)
        await asyncio.to_thread(durations.learn, self.rig.run_dir, summary)
        await asyncio.to_thread(plan_usage.record_usage, self.rig.run_dir, summary)
        log.info("plan ended", extra={"event_type": "plan_ended", "plan_id": summary["plan_id"],
                                      "outcome": summary["outcome"]})
        return str(path)

    @contextlib.asynccontextmanager
    async def _limited(self, cls: str):
        """One of the class's places on this rig, heartbeating while it waits for one: a task
        waiting here past heartbeat_timeout_s was taken for one whose worker died."""
        limit = self.limits[cls]
        acquiring = asyncio.ensure_future(limit.acquire())
        try:
            while not acquiring.done():
                await asyncio.wait({acquiring}, timeout=self.beat_every)
                if not acquiring.done():
                    self._beat()
        except BaseException:  # (cancelled: a place taken at that moment is given back)
            if acquiring.done() and not acquiring.cancelled():
                limit.release()
            acquiring.cancel()
            raise
        try:
            yield
        finally:
            limit.release()

    def _takes(self, cls: str) -> None:
        """work.concurrency.CLS 0: this rig runs none. The slot supplier cannot see a task's class
        before taking it, so the attempt fails at once, retryable: another rig may take the retry."""
        if getattr(self.rig.work.concurrency, cls) == 0:
            raise ApplicationError(f"{self.identity} runs no {cls} tasks (work.concurrency.{cls}: 0)", type="NotHere")

    # ---- one attempt -----------------------------------------------------------------------------
    async def _run(self, task: dict, ctx: dict, work) -> dict:
        attempt = ctx["attempt"]  # the workflow drives retries: each attempt is one activity
        folder = self.store.new_attempt(ctx["plan_id"], task["name"], attempt)
        event = {"task_id": f"{ctx['plan_id']}/{task['name']}", "worker_id": self.identity, "gpu_id": None,
                 "attempt": attempt, "class": task["cls"]}
        self._event("task_started", event)
        began = time.monotonic()
        try:
            result = await work(task, await outputs.localize(ctx, folder, self._fetch), folder)
        except asyncio.CancelledError:
            self._ended(task, event, began, "cancelled", "cancelled")
            raise
        except commands.StopAsked as e:  # (the workflow counts it as cancelled: work/workflow.py)
            self._ended(task, event, began, "cancelled", "cancelled")
            raise ApplicationError(str(e), self._where(attempt, folder, began), type=PLAN_CANCELLED,
                                   non_retryable=True) from None
        except Exception as e:
            failure = self._as_failure(e, self._where(attempt, folder, began))
            self._ended(task, event, began, "failed", failure.message)
            raise failure from None
        result = {"gpu": None} | result | {"worker": self.identity, "attempt": attempt, "folder": str(folder),
                                          "duration_ms": _ms(began)}
        result |= await outputs.carry(result.get("output"), folder, self.served_from)
        self._event("task_succeeded", event | {"duration_ms": result["duration_ms"],
                                              "tokens_generated": result.get("tokens")})
        self._count(task["cls"], "succeeded", began, result.get("gpu"))
        return result

    def _where(self, attempt: int, folder: Path, began: float) -> dict:
        return {"worker": self.identity, "attempt": attempt, "gpu": None, "folder": str(folder),
                "duration_ms": _ms(began)}

    def _ended(self, task: dict, event: dict, began: float, outcome: str, error: str) -> None:
        self._event(f"task_{outcome}", event | {"duration_ms": _ms(began), "error": error[-500:]})
        self._count(task["cls"], outcome, began)

    def _as_failure(self, e: Exception, where: dict) -> ApplicationError:
        """The error as Temporal carries it, with where the attempt ran; a definition error, or the
        compute API refusing the request itself (a 4xx but 408 and 429), is not retried."""
        if isinstance(e, ApplicationError):
            message, kind, final = e.message, e.type, e.non_retryable
        elif isinstance(e, commands.DefinitionError):  # (outputs.localize raises it too)
            message, kind, final = str(e), "DefinitionError", True
        elif isinstance(e, ApiRefused):
            message, kind = e.reason, "ApiRefused"
            final = e.status is not None and 400 <= e.status < 500 and e.status not in (408, 429)
        else:
            message, kind, final = str(e) or type(e).__name__, type(e).__name__, False
        return ApplicationError(message, where, type="DefinitionError" if final else kind, non_retryable=final)

    async def _gpu_command(self, task: dict, ctx: dict, folder: Path) -> dict:
        """A whole GPU from the planner (its LLMs unloaded meanwhile), renewed with each heartbeat,
        returned when the command ends however it ends."""
        holder = f"{ctx['plan_id']}/{task['name']}#{ctx['attempt']}"
        lease = await self._lease(holder)
        renewal, peak = LeaseRenewal(self.api, lease), VramPeak(self.nvml, lease["gpu"])

        def beat_and_renew():
            self._beat()
            renewal.renew()
            peak.sample()
        try:
            done = await self._command(task, ctx, folder, str(lease["gpu"]), beat_and_renew)
            return done | {"gpu": lease["gpu"]} | ({"vram_peak_mib": peak.mib} if peak.mib is not None else {})
        finally:
            renewal.stop()
            await asyncio.shield(self.api.return_gpu(lease["lease_id"], "ended"))

    async def _lease(self, holder: str) -> dict:
        """Wait for a GPU while none can be lent, heartbeating: the task stays visible as running."""
        while True:
            try:
                return await self._beating(self.api.take_gpu(holder, self.rig.work.heartbeat_timeout_s))
            except ApiRefused as e:
                if e.status != 503:
                    raise
            await self._beating(asyncio.sleep(5))

    async def _command(self, task: dict, ctx: dict, folder: Path, gpus: str = "", beat=None) -> dict:
        plan_id = ctx["plan_id"]
        env = commands.clean_env({"CUDA_VISIBLE_DEVICES": gpus, "LLAMARIG_PLAN": plan_id,
                                  "LLAMARIG_TASK": task["name"], "LLAMARIG_ATTEMPT": str(ctx["attempt"]),
                                  commands.TASK_ID: f"{plan_id}/{task['name']}#{ctx['attempt']}",
                                  commands.OWNER: self.owner}
                                 | _input_env(ctx["inputs"]) | _item_env(task), folder)
        timeout = task.get("timeout_s") or self.rig.work.task_timeout_s
        done = await commands.run(task["command"], folder, env, timeout, beat or self._beat, self.beat_every,
                                  ctx["cancel_grace_s"], lambda: self.store.stop_asked(plan_id))
        if done.exit_code != 0:
            raise ApplicationError(f"exit status {done.exit_code}; stderr: {done.stderr_tail}", type="CommandFailed")
        return {"exit_code": 0, "output": str(outputs.of_command(folder))}

    async def _transcribe(self, task: dict, ctx: dict, folder: Path) -> dict:
        spec = task["transcribe"]
        audio = Path(_resolved(spec["audio"], ctx))
        if not audio.is_file():
            raise definition_error(f"transcribe.audio: no such file {audio}")
        fmt = {"json": "verbose_json", "srt": "srt", "text": "text"}[spec["format"]]
        text = await self._beating(self.api.transcribe(audio, fmt, spec.get("language")))
        output = folder / f"output.{spec['format']}"
        output.write_text(text)
        return {"output": str(output)}

    async def _embed(self, task: dict, ctx: dict, folder: Path) -> dict:
        spec = task["embed"]
        source = Path(_resolved(spec["text"], ctx))
        if not source.is_file():
            raise definition_error(f"embed.text: no such file {source}")
        lines = [line for line in source.read_text().splitlines() if line.strip()]
        model = spec.get("model") or self._embeddings_model()
        vectors = await self._beating(self.api.embed(model, lines))
        output = folder / "output.json"
        output.write_text(json.dumps({"model": model, "lines": lines, "vectors": vectors}))
        return {"output": str(output), "count": len(vectors)}

    async def _generate(self, task: dict, ctx: dict, folder: Path, seen: dict | None = None) -> dict:
        """seen: filled with the model, the messages sent and the answer, for the sample log."""
        spec, seen = task["generate"], {} if seen is None else seen
        inputs = {k: _read_input(task["inputs"][k], v) for k, v in ctx["inputs"].items()}
        model = spec.get("model") or await self._executor(spec["executor"])
        sent = prompts.messages(spec["prompt"], inputs, task.get("untrusted", []))
        (folder / "messages.json").write_text(json.dumps(sent, indent=1))
        seen |= {"model": model, "messages": sent}
        answer = await self._beating(self.api.chat(model, sent, spec["max_tokens"], spec["temperature"],
                                                   ctx.get("submitter")))
        seen["answer"] = answer
        output = folder / "output.txt"
        output.write_text(answer["text"])
        gpus = self.rig.models[model].gpus
        return {"output": str(output), "model": model, "tokens": answer["tokens"], "gpu": ",".join(map(str, gpus))}

    async def _escalate(self, task: dict, ctx: dict, folder: Path, seen: dict | None = None) -> dict:
        if self.escalation is None:
            raise definition_error("this rig has no escalation tier (work.external), which the task asks for")
        inputs = {k: _read_input(task["inputs"][k], v) for k, v in ctx["inputs"].items()}
        return await self.escalation.run(task, ctx, inputs, folder, {} if seen is None else seen, self._beating)

    # ---- helpers ---------------------------------------------------------------------------------
    def _embeddings_model(self) -> str:
        names = [n for n, m in self.rig.models.items() if m.embeddings]
        if len(names) != 1:
            raise definition_error(f"embed.model: the rig has {len(names)} embeddings models; name one")
        return names[0]

    async def _executor(self, executor: str) -> str:
        """brain: the unswitchable LLM; worker: spread as script services scale out
        (backend/lifecycle/scale.py): a serving model with nothing outstanding, else a stopped one
        (the request loads it), else the serving one with the least outstanding work."""
        llms = {n: m for n, m in self.rig.models.items() if not m.embeddings}
        want = [n for n, m in llms.items() if m.may_switch == (executor == "worker")]
        if not want:
            raise definition_error(f"generate.executor: the rig has no {executor} model")
        return pick_model(want, await self.api.load())

    async def _fetch(self, url: str, dest: Path, sha256: str) -> None:
        await self._beating(self.api.fetch_output(url, dest, sha256))

    async def _beating(self, call):
        """Await `call`, heartbeating meanwhile: a hung worker is noticed, a cancel reaches us."""
        job = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=self.beat_every)
                if done:
                    return job.result()
                self._beat()
        finally:
            job.cancel()

    def _beat(self) -> None:
        activity.heartbeat()

    def _event(self, event_type: str, fields: dict) -> None:
        log.info(event_type, extra={"event_type": event_type} | fields)

    def _count(self, cls: str, outcome: str, began: float, gpu=None) -> None:
        if not self.counted:
            return
        attrs = {"class": cls, "outcome": outcome, "gpu": "" if gpu is None else str(gpu)}
        self.counted[0].add(1, attrs)
        self.counted[1].record(time.monotonic() - began, attrs)


class VramPeak:
    """The most memory a leased GPU held at the command's heartbeats (NVML only: the simulated
    inventory cannot see a command's own memory). Kept with the learned durations."""

    def __init__(self, nvml, gpu: int):
        self.nvml, self.gpu, self.mib = nvml, gpu, None
        self.sample()

    def sample(self) -> None:
        if self.nvml is None:
            return
        try:
            used = next(r.used_bytes for r in self.nvml.read() if r.index == self.gpu) // gpus.MIB
        except (StopIteration, self.nvml.nvml.NVMLError):
            return
        self.mib = max(self.mib or 0, used)


class LeaseRenewal:
    """Renews a GPU lease at each heartbeat, one request at a time. Once the API said the lease
    is unknown (it expired, or an operator took it back: the planner gave the GPU back to its
    LLMs), the next renew raises, which stops the command: it must not run on a GPU it lost.
    Other failures (the API restarting) are logged; the lease's TTL covers a few of them."""

    def __init__(self, api: ComputeApi, lease: dict):
        self.api, self.lease, self.sent = api, lease, None

    def renew(self) -> None:
        if self.sent is not None:
            if not self.sent.done():
                return
            self._check(self.sent.exception())
        self.sent = asyncio.ensure_future(self.api.renew_gpu(self.lease["lease_id"]))

    def stop(self) -> None:
        """The command ended: a renew still in flight is moot, and so is its failure."""
        if self.sent is not None and not self.sent.cancel() and not self.sent.cancelled():
            self.sent.exception()

    def _check(self, error: BaseException | None) -> None:
        if isinstance(error, ApiRefused) and error.status == 404:
            raise ApplicationError(f"lost GPU {self.lease['gpu']}: its lease {self.lease['lease_id']} expired or "
                                   "was taken back, so the command was stopped", type="GpuLeaseLost")
        if error is not None:
            log.warning("a GPU lease renew failed", extra={"lease_id": self.lease["lease_id"], "error": str(error)})


def pick_model(names: list[str], load: dict) -> str:
    """Of `names`, the model an llm task goes to (load: the compute API's /v1/load answer)."""
    def outstanding(n: str) -> int:
        return load.get(n, {}).get("inflight", 0) + load.get(n, {}).get("waiting", 0)

    serving = [n for n in names if load.get(n, {}).get("state") in ("ready", "busy")]
    least = min(serving, key=lambda n: (outstanding(n), n), default=None)
    if least is not None and outstanding(least) == 0:
        return least
    stopped = [n for n in names if load.get(n, {}).get("state") == "stopped" and not load[n].get("held")]
    if stopped:
        return min(stopped)
    return least or min(names, key=lambda n: (outstanding(n), n))


def rig_secrets(rig) -> list[str]:
    """The keys this process holds: taken out of anything it keeps (the sample log)."""
    keys = load_keys(rig)
    return [k.decode() for k in (*keys.client, keys.operator) if k]


def task_owner(rig, key: str) -> str:
    """What every command of this worker process (its key: cpu, cpu-1, gpu) carries in its
    environment, for `commands.sweep`: a process kills only what its own predecessor left."""
    return f"work-{key}:{rig.run_dir}"


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


def _resolved(value: str, ctx: dict) -> str:
    """@TASK in a spec field: that dependency's output file."""
    return ctx["outputs"][value[1:]] if value.startswith("@") else value


def _read_input(raw: str, value: str) -> str:
    """An @TASK input is the dependency's output file: its text goes to the model."""
    return Path(value).read_text(errors="replace") if raw.startswith("@") else value


def _item_env(task: dict) -> dict[str, str]:
    """An item of a for_each task (work/mapping.py): which one."""
    item = task.get("map")
    return {"LLAMARIG_ITEM": item["item"], "LLAMARIG_INDEX": str(item["index"])} if item else {}


def _input_env(inputs: dict[str, str]) -> dict[str, str]:
    return {"INPUT_" + k.upper().replace("-", "_"): v for k, v in inputs.items()}
