"""The rig's `work.external` section: the escalation tier, an OpenAI-compatible endpoint outside
the rig that an llm task may hand its work to (work/external.py). It advises only: the worker's
escalation path is its one caller, with the tier's own key, never the rig's."""
from __future__ import annotations

from pydantic import Field, model_validator

from llamarig.shared.rig_types import EnvName, Strict


class ExternalTier(Strict):
    base_url: str = Field(pattern=r"^https?://[^\s/]+(:\d{1,5})?(/[^\s]*)?$", description="Base URL of the "
                          "endpoint's OpenAI API, the part before /chat/completions (e.g. https://api.example.com/v1).")
    model: str = Field(min_length=1, max_length=200, description="The model the endpoint is asked for.")
    key_env: EnvName | None = Field(None, description="Environment variable (of work-gpu) holding the endpoint's "
                                    "key, sent as a bearer token to it and nowhere else.")
    key_file: str | None = Field(None, description="File holding the endpoint's key (relative: from paths.root); "
                                 "one of key_env and key_file, or neither for an endpoint that takes no key.")
    price_in_per_1k: float = Field(0, ge=0, le=1000, description="Cost of 1,000 input (prompt) tokens, in "
                                   "`currency`; 0: free.")
    price_out_per_1k: float = Field(0, ge=0, le=1000, description="Cost of 1,000 output (completion) tokens.")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="The prices' and budget's currency (a label).")
    daily_budget: float = Field(1, ge=0, le=1_000_000, description="Most the tier may cost per UTC day, in "
                                "`currency`. A call is made only if its worst case (its prompt at 2 characters a "
                                "token, and max_tokens out) fits what is left; else its task fails with "
                                "budget_exhausted, uncalled. 0: no call is ever made.")
    rpm: int = Field(30, ge=1, le=100_000, description="Calls per minute this rig makes at most; more wait "
                     "(work-cpu runs them: each of work.cpu_processes paces to its share).")
    timeout_s: float = Field(60, gt=0, le=600, description="Seconds one call may take before it is dropped (and "
                             "retried as a failure).")
    retries: int = Field(3, ge=0, le=10, description="Calls again after a 429, a 5xx, a timeout or a lost "
                         "connection, within one attempt of the task.")
    retry_initial_s: float = Field(1, gt=0, le=60, description="Seconds before the first call again; doubling "
                                   "each time; a Retry-After up to timeout_s is honoured instead.")

    @model_validator(mode="after")
    def _one_key(self):
        if self.key_env and self.key_file:
            raise ValueError("key_env and key_file: set one of them, not both")
        return self
