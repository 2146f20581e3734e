"""What the structured-output check adds to a job: the time a job awaits `StructuredOutputCheck.problem`
before its request reaches the engine, for specifications of each kind seen for the first time (each one new:
a field name or a choice of its own, so that neither the check nor the backend's compile cache has seen it)
and seen before (remembered), with the real probe process on the default model's tokenizer, no engine.

    python tools/structured_check_cost.py [--repeats 5] [--max-tokens 64,256] [--out results/structured-check]

Writes cost.json and cost.md to --out, with the machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path


def specifications(index: int) -> dict[str, dict]:
    """One specification of each kind, made new by `index`."""
    field = f"field_{index}"
    return {
        "json schema (an object of 3 fields)": {
            "json": {
                "type": "object",
                "properties": {field: {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
                "required": [field, "age"],
            }
        },
        "json object": {"json_object": True},  # one grammar for all: new only the first time
        "regex (an e-mail address)": {"regex": rf"[a-z]+{index}@[a-z]+\.com"},
        "choice (3 words)": {"choice": [f"yes{index}", "no", "maybe"]},
        "grammar (EBNF, a list of numbers)": {"grammar": f'root ::= "[{index}" ("," [0-9]+)* "]"'},
    }


async def measure(config, repeats: int, max_tokens: int) -> dict[str, dict]:
    from vllm.sampling_params import StructuredOutputsParams

    from tpworker.serving.structured_check import StructuredOutputCheck

    check = StructuredOutputCheck(config, timeout=60)
    check.start()
    await check._probe  # the process's start is not what a job waits for once the worker is up
    figures: dict[str, dict] = {}
    for index in range(repeats):
        for kind, constraint in specifications(index).items():
            spec = StructuredOutputsParams(**constraint)
            began = time.perf_counter()
            refusal = await check.problem(spec, max_tokens)
            first = time.perf_counter() - began
            began = time.perf_counter()
            await check.problem(StructuredOutputsParams(**constraint), max_tokens)
            again = time.perf_counter() - began
            assert refusal is None, (kind, refusal)
            entry = figures.setdefault(kind, {"first_s": [], "remembered_s": []})
            entry["first_s"].append(first)
            entry["remembered_s"].append(again)
    check.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", default="64,256", help="the jobs' max_tokens (the walk's length), e.g. 64,256")
    parser.add_argument("--out", default="results/structured-check")
    options = parser.parse_args()

    from vllm import AsyncEngineArgs

    from tpworker.config.settings import models_cache_dir
    from tpworker.models import default_model
    from tpworker.planning.hardware import describe_cpu

    _, padded = default_model.ensure_built(models_cache_dir())
    config = AsyncEngineArgs(model=str(padded), dtype="float32", max_model_len=2048).create_engine_config()
    machine = f"{describe_cpu()}, {len(os.sched_getaffinity(0))} cores"
    rows, result = [], {"machine": machine, "created": datetime.now(UTC).isoformat(), "runs": {}}
    for max_tokens in (int(part) for part in options.max_tokens.split(",")):
        figures = asyncio.run(measure(config, options.repeats, max_tokens))
        result["runs"][str(max_tokens)] = figures
        for kind, entry in figures.items():
            first, again = statistics.median(entry["first_s"]), statistics.median(entry["remembered_s"])
            rows.append(
                f"| {kind} | {max_tokens} | {first * 1000:.0f} | {max(entry['first_s']) * 1000:.0f} | "
                f"{again * 1e6:.0f} |"
            )
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    table = "\n".join(
        [
            "| specification | max_tokens | first time, median ms | first time, max ms | remembered, median µs |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    text = (
        f"# What the structured-output check adds to a job\n\n`python tools/structured_check_cost.py --repeats "
        f"{options.repeats} --max-tokens {options.max_tokens}` ({result['created']})\n\n{table}\n\n"
        f"{options.repeats} specifications of each kind, each new (json object: one grammar, new only the first "
        "time). The time a job waits for the check before its request reaches the engine: vLLM's checks, the "
        "compile and the walks in the probe process, and the round trip to it.\n\n"
        f"Machine: {result['machine']}.\n"
    )
    (out / "cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
