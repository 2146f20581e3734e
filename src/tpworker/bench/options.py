"""`tpworker bench`'s command-line options (light: cli.py builds every parser at start)."""

from __future__ import annotations

import argparse

# --paths takes these groups or single routes; the raw engine is always measured (the baseline),
# and so is raw-paired (the worker's own engine driven directly) wherever a handler route is.
GROUPS = {
    "raw": ("raw",),
    "handler": ("handler-native", "handler-openai"),
    "dev": ("dev-native", "dev-openai"),
    "vllm-serve": ("vllm-serve",),
}
ROUTE_ORDER = ("raw", "raw-paired", "handler-native", "handler-openai", "dev-native", "dev-openai", "vllm-serve")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more integers >= 1, e.g. 1,8,32")
    return tuple(sorted(set(values)))


def route_list(text: str) -> tuple[str, ...]:
    chosen = {"raw"}
    for part in text.replace(" ", "").split(","):
        if part in GROUPS:
            chosen.update(GROUPS[part])
        elif part in ROUTE_ORDER and part != "raw-paired":
            chosen.add(part)
        elif part:
            names = ", ".join([*GROUPS, *(r for r in ROUTE_ORDER if r not in GROUPS and r != "raw-paired")])
            raise argparse.ArgumentTypeError(f"{part!r} is not a path. Accepted: {names}")
    if chosen & set(GROUPS["handler"]):
        chosen.add("raw-paired")
    return tuple(r for r in ROUTE_ORDER if r in chosen)


FAIRNESS = ("regex", "deep-json", "context-limit", "n-max-tokens")  # bench/fairness_jobs.py's hostile scenarios


def fairness_list(text: str) -> tuple[str, ...]:
    names = tuple(part for part in text.replace(" ", "").split(",") if part)
    unknown = [name for name in names if name not in FAIRNESS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: give one or more of {', '.join(FAIRNESS)}")
    return names


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def add_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "--model", help="model to serve (sets MODEL_NAME; default: the worker's, the embedded one on CPU)"
    )
    bench.add_argument(
        "--tp",
        type=int_list,
        default=(1,),
        metavar="SIZES",
        help="tensor-parallel sizes, one engine each, e.g. 1,2 (default 1)",
    )
    bench.add_argument(
        "--concurrency",
        type=int_list,
        default=(1, 8, 32),
        metavar="LEVELS",
        help="requests sent at once, one round per level and repetition (default 1,8,32)",
    )
    bench.add_argument("--prompt-tokens", type=positive, default=128, help="prompt length in tokens (default 128)")
    bench.add_argument(
        "--output-tokens",
        type=positive,
        default=64,
        help="tokens generated per request, exactly (ignore_eos; default 64)",
    )
    bench.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the outputs (default); --no-stream: whole responses (no TTFT or ITL)",
    )
    bench.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="ROUNDS",
        help="unmeasured rounds per path at the highest concurrency first (default 1)",
    )
    bench.add_argument(
        "--repetitions",
        type=positive,
        default=3,
        help="measured rounds per path and level; the median is reported with min and max (default 3)",
    )
    bench.add_argument(
        "--paths",
        type=route_list,
        default=route_list("handler,dev"),
        metavar="PATHS",
        help="what to measure besides the raw engine: handler, dev, vllm-serve, or single routes "
        "(handler-native, handler-openai, dev-native, dev-openai) (default handler,dev)",
    )
    bench.add_argument(
        "--max-concurrency",
        type=positive,
        metavar="N",
        help="the worker's MAX_CONCURRENCY (default: the highest level)",
    )
    bench.add_argument(
        "--cold-start",
        type=positive,
        metavar="N",
        help="instead of rounds: N cold starts each of the raw engine, the worker and the worker without its "
        "warm-up per TP size, interleaved, each followed by 10 requests one after another; prints each start "
        "phase's time (median), the first job's time to first token against jobs 2-10, and what the worker adds",
    )
    bench.add_argument(
        "--fairness",
        action="store_true",
        help="instead of rounds: whether one hostile request in flight (a regex of nested quantifiers, a deeply "
        "nested JSON schema, prompts at the context limit, n x max_tokens at the limits) slows valid jobs down, "
        "through `tpworker dev` at the first --tp size; writes fairness.json and fairness.md",
    )
    bench.add_argument(
        "--fairness-jobs",
        type=positive,
        default=24,
        metavar="N",
        help="valid jobs per --fairness scenario, sent by 4 clients (default 24)",
    )
    bench.add_argument(
        "--fairness-head-start",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds a single hostile request runs alone before the valid load starts (its cost grows as it "
        "runs; default 20)",
    )
    bench.add_argument(
        "--fairness-only",
        type=fairness_list,
        metavar="NAMES",
        help=f"run these hostile scenarios only (and the baselines), e.g. context-limit; of {', '.join(FAIRNESS)}",
    )
    bench.add_argument(
        "--name", help="results folder name (default: model, TP sizes and time; --fairness: fairness-<CPU>)"
    )
    bench.add_argument("--out", default="results/bench", help="where result folders go (default results/bench)")
    bench.add_argument("--handler", help="the worker's handler.py (default: ./handler.py, else the repository's)")
