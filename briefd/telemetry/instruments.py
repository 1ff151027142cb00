"""The GenAI metric instruments, made once per meter for the conventions chosen (old
names, new names or both: :class:`briefd.telemetry.genai.Conventions`), and how one call's
tokens are recorded on them."""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import Meter

from briefd.messages import Usage
from briefd.telemetry import genai as g


class Instruments:
    """The GenAI metric instruments of the conventions chosen (old, new or both)."""

    def __init__(self, meter: Meter, conv: g.Conventions) -> None:
        def hist(name: str, unit: str, desc: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(
                name, unit=unit, description=desc, explicit_bucket_boundaries_advisory=buckets
            )

        s, tok = g.DURATION_BUCKETS_S, g.TOKEN_BUCKETS
        self.durations = []
        self.ttfcs = []
        self.old_usage = None
        self.counters: dict[str, Any] = {}
        self.op_tokens: dict[str, Any] = {}
        if conv.old:
            self.durations.append(hist(g.OLD_DURATION, "s", "GenAI operation duration.", s))
            self.ttfcs.append(hist(g.OLD_TTFC, "s", "Time to the first chunk of a stream.", s))
            self.old_usage = hist(g.OLD_TOKEN_USAGE, "{token}", "Input and output tokens.", tok)
        if conv.new:
            self.durations.append(hist(g.NEW_DURATION, "s", "GenAI inference duration.", s))
            self.ttfcs.append(hist(g.NEW_TTFC, "s", "Time to the first chunk of a stream.", s))
            for name, desc in (
                (g.NEW_USAGE_INPUT, "Input tokens, cached ones included."),
                (g.NEW_USAGE_OUTPUT, "Output tokens, reasoning ones included."),
                (g.NEW_USAGE_CACHE_READ, "Input tokens served from the provider's cache."),
                (g.NEW_USAGE_REASONING, "Output tokens spent on reasoning."),
            ):
                self.counters[name] = meter.create_counter(name, unit="{token}", description=desc)
            self.op_tokens["input"] = hist(g.NEW_OPERATION_INPUT, "{token}", "Per call.", tok)
            self.op_tokens["output"] = hist(g.NEW_OPERATION_OUTPUT, "{token}", "Per call.", tok)
        self.workflow = hist(
            g.WORKFLOW_DURATION, "s", "A whole job, start to end.", g.WORKFLOW_BUCKETS_S
        )

    def usage(self, attrs: dict[str, Any], usage: Usage | None) -> None:
        """A call's tokens; ``None``: a call that reported none (recorded as 0, unknown)."""
        if self.old_usage is not None and usage is not None:
            for kind, n in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
                self.old_usage.record(n, {**attrs, g.TOKEN_TYPE: kind})
        if not self.counters:
            return
        modality = {**attrs, g.TOKEN_MODALITY: "text" if usage is not None else "unknown"}
        u = usage if usage is not None else Usage()
        self.counters[g.NEW_USAGE_INPUT].add(u.prompt_tokens, modality)
        self.counters[g.NEW_USAGE_OUTPUT].add(u.completion_tokens, modality)
        if usage is not None:
            self.counters[g.NEW_USAGE_CACHE_READ].add(u.cached_tokens, modality)
            self.counters[g.NEW_USAGE_REASONING].add(u.reasoning_tokens, modality)
            self.op_tokens["input"].record(u.prompt_tokens, attrs)
            self.op_tokens["output"].record(u.completion_tokens, attrs)
