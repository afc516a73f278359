"""An llm task's escalation path, the only caller of the escalation tier (external.py): a task
with external: true, or one whose local attempts failed escalate.after_failures times, hands
the tier its task, inputs and the local attempts' errors; the answer is the task's output.
Such an attempt runs on work-cpu (attempts.asks_tier routes it): it needs no GPU.
Each call is costed in the task's result (so in its plan's view), in llamarig_external_* and in
the usage by key (model external:MODEL)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from temporalio.exceptions import ApplicationError

from llamarig.shared.usage_store import EXTERNAL, UsageStore
from llamarig.work import external_budget, prompts
from llamarig.work.external import Advice, Tier, TierError

log = logging.getLogger("llamarig.work")


class Escalation:
    def __init__(self, rig, tier: Tier, meter=None):
        self.rig, self.tier = rig, tier
        self.metrics = meter and {
            "calls": meter.create_counter("llamarig_external_calls_total", "Calls to the escalation tier, by outcome"),
            "tokens": meter.create_counter("llamarig_external_tokens_total", "Tokens of the escalation tier's calls, "
                                           "by direction (in, out)"),
            "spent": meter.create_gauge_float("llamarig_external_spent_today", "What the escalation tier cost this UTC "
                                              "day, in work.external.currency"),
            "left": meter.create_gauge_float("llamarig_external_budget_left", "What is left of the escalation tier's "
                                             "daily budget")}

    async def run(self, task: dict, ctx: dict, inputs: dict, folder: Path, seen: dict, beating) -> dict:
        spec, model = task["generate"], f"{EXTERNAL}{self.tier.config.model}"
        sent = prompts.handoff(spec["prompt"], inputs, task.get("untrusted", []), ctx.get("failures") or [])
        (folder / "messages.json").write_text(json.dumps(sent, indent=1))
        seen |= {"model": model, "messages": sent}
        try:
            advice = await beating(self.tier.ask(sent, spec["max_tokens"], spec["temperature"]))
        except TierError as e:
            self._counted(task, ctx, None, e.code)
            raise ApplicationError(f"{e.code}: {e.reason}", type=e.code, non_retryable=e.final) from None
        seen["answer"] = {"text": advice.text, "tokens": advice.tokens_out, "prompt_tokens": advice.tokens_in}
        self._counted(task, ctx, advice, "succeeded")
        output = folder / "output.txt"
        output.write_text(advice.text)
        return {"output": str(output), "model": model, "tokens": advice.tokens_out, "gpu": None,
                "external": {"calls": advice.calls, "tokens_in": advice.tokens_in, "tokens_out": advice.tokens_out,
                             "cost": round(advice.cost, 6), "currency": self.tier.config.currency,
                             "estimated": advice.estimated}}

    def _counted(self, task: dict, ctx: dict, advice: Advice | None, outcome: str) -> None:
        spent, left = self.tier.budget.left()
        log.info("escalation tier asked", extra={
            "event_type": "external_called", "task_id": f"{ctx['plan_id']}/{task['name']}", "outcome": outcome,
            "cost": advice and advice.cost, "spent_today": spent})
        if self.metrics:
            self.metrics["calls"].add(1, {"outcome": outcome})
            self.metrics["spent"].set(spent)
            self.metrics["left"].set(left)
            if advice:
                self.metrics["tokens"].add(advice.tokens_in, {"direction": "in"})
                self.metrics["tokens"].add(advice.tokens_out, {"direction": "out"})
        if advice is None and outcome == "budget_exhausted":
            return  # (no call was made)
        day = external_budget.today()
        row = [advice.calls, 0, advice.tokens_in, advice.tokens_out, 0, 0, 0, advice.cost] if advice else \
            [1, 1, 0, 0, 0, 0, 0, 0.0]
        try:
            where = (day, ctx.get("submitter") or "none", f"{EXTERNAL}{self.tier.config.model}")
            UsageStore(self.rig.run_dir).add({where: row})
        except Exception as e:  # the task's result keeps the cost: only the usage row is lost, and said
            log.warning("escalation usage not written", extra={"reason": str(e), "event_type": "usage_unwritten"})
