"""A job's budget and the check made before each stage's call.

The check is made by the coordinator before it tells a stage to start, so a
stage refused costs nothing: no token is asked for and no HTTP call is made.
The estimate is the stage's worst case, the way providers reserve it: the
prompt at four characters a token, plus the stage's ``max_tokens`` of output
(:func:`briefd.limits.gcra.estimate_tokens`), added to what the job has
already spent. A stage without ``max_tokens`` is estimated at its prompt only.
Retries inside a stage are not checked again: they are the same call.
"""

from __future__ import annotations

from dataclasses import dataclass

from briefd.config import Settings
from briefd.costs.prices import Price, estimate_cost
from briefd.limits.gcra import estimate_tokens
from briefd.messages import ErrorCode, JobSpec, PipelineError


@dataclass(frozen=True)
class JobBudget:
    """The most one job may spend; ``None`` is no limit. ``source`` says where each came from."""

    max_usd: float | None = None
    max_tokens: int | None = None
    usd_source: str = ""
    tokens_source: str = ""

    @property
    def unlimited(self) -> bool:
        return self.max_usd is None and self.max_tokens is None


def job_budget(job: JobSpec, settings: Settings) -> JobBudget:
    """The job's own ``max_cost_usd``/``max_tokens``, else the daemon's defaults."""
    usd: float | None
    tokens: int | None
    if job.max_cost_usd is not None:
        usd, usd_src = job.max_cost_usd, "the job's max_cost_usd"
    else:
        usd, usd_src = settings.max_job_cost_usd, "BRIEFD_MAX_JOB_COST_USD"
    if job.max_tokens is not None:
        tokens, tokens_src = job.max_tokens, "the job's max_tokens"
    else:
        tokens, tokens_src = settings.max_job_tokens, "BRIEFD_MAX_JOB_TOKENS"
    return JobBudget(usd, tokens, usd_src, tokens_src)


def refuse_stage(
    budget: JobBudget,
    *,
    stage: str,
    prompt_chars: int,
    max_tokens: int | None,
    price: Price | None,
    spent_usd: float,
    spent_tokens: int,
) -> PipelineError | None:
    """``BUDGET_EXCEEDED`` if the stage's estimate on top of the spend passes the budget.

    ``price`` None is the embedded model: it costs nothing, so only tokens count.
    """
    tokens = estimate_tokens(prompt_chars, max_tokens)
    if budget.max_tokens is not None and spent_tokens + tokens > budget.max_tokens:
        return PipelineError(
            stage=stage,
            code=ErrorCode.BUDGET_EXCEEDED,
            message=f"not called: about {tokens} tokens (prompt/4 + max_tokens) on top of "
            f"{spent_tokens} used would pass {budget.tokens_source} of {budget.max_tokens}",
            hint=f"raise {budget.tokens_source} or lower the stage's max_tokens",
        )
    if budget.max_usd is not None and price is not None:
        prompt_tokens = estimate_tokens(prompt_chars, None)
        usd = estimate_cost(prompt_tokens, max_tokens, price)
        if spent_usd + usd > budget.max_usd + 1e-9:
            return PipelineError(
                stage=stage,
                code=ErrorCode.BUDGET_EXCEEDED,
                message=f"not called: estimated ${usd:.6f} ({tokens} tokens) on top of "
                f"${spent_usd:.6f} spent would pass {budget.usd_source} of "
                f"${budget.max_usd:.6f}",
                hint=f"raise {budget.usd_source}, lower the stage's max_tokens, or check "
                "the price table (BRIEFD_PRICES)",
            )
    return None
