"""What `tpworker bench --fairness` sends: the valid jobs, the hostile requests of each scenario, and the token
counts they are sized by (through the worker's own /tokenize route)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tpworker.bench.workload import FILLER

if TYPE_CHECKING:
    from tpworker.bench.fairness import Client

# A scenario: (name, what, the hostile request's kind, its input (single) or input maker (repeated)).
Scenario = tuple[str, str, str | None, dict[str, Any] | Callable[[int], dict[str, Any]] | None]

CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "sampling_params": {"max_tokens": 16, "temperature": 0},
}
PROMPT = {"prompt": "The capital of France is", "sampling_params": {"max_tokens": 16, "temperature": 0}}
REGEX = "((a*)*){50}b"
# The regex costs little to compile; its cost is in matching: the grammar's per-step token mask grows with every
# "a" generated (ever more ways to split a run of a's among the nested groups). Left to itself the model writes
# "b" at once (two tokens), so the job does what a hostile client would: a run of a's as the
# prompt, and only the tokens that run is made of allowed (allowed_token_ids), so that the "b" never comes.
REGEX_PROMPT = "a" * 64
# vllm.sampling_params.MAX_STRUCTURED_OUTPUT_JSON_NESTING (vLLM 0.32): objects and arrays may nest 64 levels
# (depths 0-63). Each schema object is two of them (itself, its "properties"), the innermost property's schema
# one more: 31 objects put it at depth 62, the deepest vLLM accepts (a test checks it against vLLM).
VLLM_JSON_NESTING = 64
VLLM_JSON_LEVELS = (VLLM_JSON_NESTING - 1) // 2
CONTEXT_MARGIN = 8  # the context-filling prompt: the context less these tokens (about 2040 of 2048)
STORY = "Once upon a time"


def nested_schema(levels: int) -> dict[str, Any]:
    """`levels` objects, each with one required property, the innermost a string."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


def schema_job(levels: int) -> dict[str, Any]:
    schema = {"json": nested_schema(levels)}
    return {"prompt": "Write the JSON object:", "sampling_params": {"max_tokens": 1024, "structured_outputs": schema}}


def deepest_schema_levels() -> int:
    """The deepest nested_schema both vLLM and the worker take: the worker refuses a job nested more than
    serving.jobs.MAX_NESTING levels from its input's root (3 of them above the schema), before vLLM sees it."""
    from tpworker.serving.job_errors import JobError
    from tpworker.serving.job_input import check_json_values

    for levels in range(VLLM_JSON_LEVELS, 0, -1):
        try:
            check_json_values(schema_job(levels))
            return levels
        except JobError:
            continue
    return 1


def valid_job(index: int) -> tuple[str, dict[str, Any]]:
    return ("chat", CHAT) if index % 2 == 0 else ("prompt", PROMPT)


def context_text(words: int, tag: str) -> str:
    """`words` words of prose after a tag of its own (so that vLLM's prefix cache serves no request)."""
    filler = FILLER.split()
    return f"[{tag}] " + " ".join(filler[i % len(filler)] for i in range(words))


def scenarios(sizes: dict[str, Any]) -> list[Scenario]:
    """(name, what, the hostile request's kind: None, "single" or "repeated", its input or input maker)."""
    context, story, levels = sizes["max_model_len"], sizes["story_tokens"], sizes["schema_levels"]
    regex = {
        "prompt": REGEX_PROMPT,
        "sampling_params": {
            "max_tokens": 1024,
            "temperature": 0,
            "allowed_token_ids": sizes["a_tokens"],
            "structured_outputs": {"regex": REGEX},
        },
    }
    words = sizes["context_words"]

    def full(index: int) -> dict[str, Any]:
        return {"prompt": context_text(words, f"ctx {index:04d}"), "sampling_params": {"max_tokens": 1}}

    n_max = {
        "prompt": STORY,
        "sampling_params": {"n": 16, "max_tokens": context - story, "ignore_eos": True, "temperature": 1.0},
    }
    return [
        ("baseline", "the valid load alone", None, None),
        ("regex", f"structured_outputs.regex {REGEX}, only a's allowed, max_tokens 1024", "single", regex),
        (
            "deep-json",
            f"structured_outputs.json: {levels} nested objects, max_tokens 1024",
            "single",
            schema_job(levels),
        ),
        ("context-limit", f"{sizes['context_tokens']}-token prompts, max_tokens 1, back to back", "repeated", full),
        ("n-max-tokens", f"n 16 x max_tokens {context - story}, ignore_eos, temperature 1", "single", n_max),
        ("baseline-again", "the valid load alone (drift)", None, None),
    ]


async def measure_sizes(client: Client) -> dict[str, Any]:
    """Token counts through the worker's own /tokenize: the context, the story prompt, and how many words of
    text fill the context but CONTEXT_MARGIN tokens (a binary search on the words)."""

    async def count(text: str) -> dict[str, Any]:
        shown = await client.runsync({"route": "/tokenize", "body": {"prompt": text}, "method": "POST"})
        output = shown.get("output")
        output = output[0] if isinstance(output, list) and output else output
        if not isinstance(output, dict) or "count" not in output:
            raise RuntimeError(f"/tokenize answered {str(shown)[:500]}")
        return output

    first = await count(STORY)
    context = first["max_model_len"]
    target, low, high = context - CONTEXT_MARGIN, 1, context
    while low < high:  # the most words whose text has at most `target` tokens
        middle = (low + high + 1) // 2
        if (await count(context_text(middle, "ctx 0000")))["count"] <= target:
            low = middle
        else:
            high = middle - 1
    return {
        "max_model_len": context,
        "story_tokens": first["count"],
        "context_words": low,
        "context_tokens": (await count(context_text(low, "ctx 0000")))["count"],
        "a_tokens": sorted(set((await count(REGEX_PROMPT))["tokens"])),
        "schema_levels": deepest_schema_levels(),
        "schema_levels_vllm": VLLM_JSON_LEVELS,
    }
