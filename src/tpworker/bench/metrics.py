"""Request timings -> figures per round, median/min/max over rounds, and ratios to the raw engine.

Definitions (as vLLM's own benchmarks use them):
- output tokens/s: all output tokens of a round / (last response - first request sent);
- TTFT: request sent -> first token received (streamed rounds only);
- ITL: inter-token latency as time per output token after the first,
  (last token - first token) / (tokens - 1). The worker streams tokens in chunks (every chunk is
  an HTTP post on RunPod), so the gaps between arrivals are not per token; this average is;
- E2E: request sent -> last token received;
- arrivals/s and the longest silence: how a stream reaches its reader. An arrival is one read of the
  response that brought text (a chunk: one or more tokens); per request, arrivals after the first per
  second between the first and the last, and the longest gap between two arrivals. The median of the
  first and the largest of the second over a round's requests.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

FIGURES = (
    "tokens_per_s",
    "ttft_ms_median",
    "ttft_ms_p90",
    "itl_ms_median",
    "e2e_ms_median",
    "e2e_ms_p90",
    "arrivals_per_s_median",
    "silence_ms_max",
)


@dataclass
class Timing:
    """One request, as the client saw it (perf_counter seconds)."""

    sent: float
    done: float
    tokens: int = 0  # output tokens the path reported
    first: float | None = None  # first token's arrival; None when not streamed
    last: float | None = None  # last token's arrival, when the response ends later (dev: the job's final status)
    prompt_tokens: int | None = None
    error: str | None = None
    arrivals: list[float] = field(default_factory=list)  # each read that brought text (streamed only)

    def note_arrival(self) -> None:
        self.last = now = time.perf_counter()
        self.first = self.first or now
        self.arrivals.append(now)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def round_figures(timings: list[Timing], expected_tokens: int) -> dict[str, Any]:
    """The figures of one round of concurrent requests."""
    ok = [t for t in timings if t.error is None]
    span = max(t.done for t in timings) - min(t.sent for t in timings)
    tokens = sum(t.tokens for t in ok)
    ttft = [(t.first - t.sent) * 1000 for t in ok if t.first is not None]
    itl = [((t.last or t.done) - t.first) * 1000 / (t.tokens - 1) for t in ok if t.first is not None and t.tokens > 1]
    e2e = [(t.done - t.sent) * 1000 for t in ok]
    prompts = [t.prompt_tokens for t in ok if t.prompt_tokens is not None]
    streams = [t.arrivals for t in ok if len(t.arrivals) > 1]
    rates = [(len(a) - 1) / (a[-1] - a[0]) for a in streams if a[-1] > a[0]]
    silences = [max(b - a for a, b in itertools.pairwise(arrivals)) * 1000 for arrivals in streams]
    return {
        "requests": len(timings),
        "errors": [t.error for t in timings if t.error is not None][:3],
        "complete": len(ok) == len(timings) and all(t.tokens == expected_tokens for t in ok),
        "output_tokens": tokens,
        "prompt_tokens_mean": statistics.fmean(prompts) if prompts else None,
        "tokens_per_s": tokens / span if span > 0 else 0.0,
        "ttft_ms_median": percentile(ttft, 50),
        "ttft_ms_p90": percentile(ttft, 90),
        "itl_ms_median": percentile(itl, 50),
        "e2e_ms_median": percentile(e2e, 50),
        "e2e_ms_p90": percentile(e2e, 90),
        "arrivals_per_s_median": percentile(rates, 50),
        "silence_ms_max": max(silences, default=None),
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each figure over the measured rounds (repetitions)."""
    summary: dict[str, Any] = {
        "repetitions": len(rounds),
        "complete": bool(rounds) and all(r["complete"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
    }
    for name in FIGURES:
        values = [r[name] for r in rounds if r.get(name) is not None]
        summary[name] = (
            {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None
        )
    return summary


def median(summary: dict[str, Any] | None, figure: str) -> float | None:
    value = (summary or {}).get(figure)
    return value["median"] if value else None


def ratio_to_raw(path: dict[str, Any], raw: dict[str, Any] | None) -> dict[str, float | None]:
    """A path's tokens/s as a fraction of the raw engine's, and the TTFT it adds (ms)."""
    ours, base = median(path, "tokens_per_s"), median(raw, "tokens_per_s")
    ttft, base_ttft = median(path, "ttft_ms_median"), median(raw, "ttft_ms_median")
    return {
        "tokens_per_s": ours / base if ours is not None and base else None,
        "ttft_added_ms": ttft - base_ttft if ttft is not None and base_ttft is not None else None,
    }
