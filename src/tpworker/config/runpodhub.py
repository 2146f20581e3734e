"""The RunPod Hub listing, .runpod/hub.json, generated from the settings so that it cannot drift.

Every variable the worker itself reads is an input (worker-vllm's name as the key, the others
named in its description), plus the vLLM engine arguments people set most; the rest of vLLM's are
in docs/ENVIRONMENT.md. `python -m tpworker.config.runpodhub --write` rewrites the file; without --write
(what the tests run) it fails when the file is stale. .runpod/tests.json is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tpworker.config.variables import ALIASES, OTHER_VARIABLES, VLLM_ALIASES, WorkerSettings, variable_name

ROOT = Path(__file__).resolve().parents[3]
HUB_JSON = ROOT / ".runpod" / "hub.json"

# Shown at first; everything else is under the Hub's "advanced" fold.
BASIC = {
    "MODEL_NAME",
    "MODEL_REVISION",
    "TENSOR_PARALLEL_SIZE",
    "MAX_CONCURRENCY",
    "HF_TOKEN",
    "MAX_MODEL_LEN",
    "GPU_MEMORY_UTILIZATION",
    "QUANTIZATION",
}
# Engine arguments listed on the Hub (name -> the Hub's input type).
ENGINE_INPUTS = {
    "max_model_len": "number",
    "gpu_memory_utilization": "number",
    "quantization": "string",
    "dtype": "string",
    "kv_cache_dtype": "string",
    "enforce_eager": "boolean",
    "enable_prefix_caching": "boolean",
    "max_num_seqs": "number",
    "max_num_batched_tokens": "number",
    "trust_remote_code": "boolean",
    "chat_template": "string",
    "enable_auto_tool_choice": "boolean",
    "tool_call_parser": "string",
    "reasoning_parser": "string",
}
SET_BY_RUNPOD = ("CUDA_VISIBLE_DEVICES", "RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_AI_API_KEY")
PRESETS = [
    {
        "name": "SmolLM2 135M Instruct (smoke test)",
        "defaults": {"MODEL_NAME": "HuggingFaceTB/SmolLM2-135M-Instruct", "MAX_MODEL_LEN": 2048},
    },
    {
        "name": "Llama 3.1 8B Instruct",
        "defaults": {"MODEL_NAME": "meta-llama/Llama-3.1-8B-Instruct", "MAX_MODEL_LEN": 16384},
    },
]


WORDS = {
    "HF": "HF",
    "TP": "TP",
    "OPENAI": "OpenAI",
    "VLLM": "vLLM",
    "CPU": "CPU",
    "GPU": "GPU",
    "CUDA": "CUDA",
    "KV": "KV",
    "OMP": "OMP",
    "AI": "AI",
    "API": "API",
    "RUNPOD": "RunPod",
    "TPWORKER": "tpworker",
    "N": "n",
}
# vLLM gives no help text for these.
HELP = {"kv_cache_dtype": "Data type of the KV cache: auto (the model's) or an fp8 type, which halves it"}


def _title(key: str) -> str:
    return " ".join(WORDS.get(word, word.capitalize()) for word in key.split("_"))


def _input(
    key: str,
    kind: str,
    description: str,
    default: object = None,
    minimum: float | None = None,
    options: Iterable[object] = (),
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": _title(key), "type": kind, "description": description}
    if options:
        entry["options"] = [{"label": str(o), "value": str(o)} for o in options]
    if default is not None and default != "":
        entry["default"] = default
    if minimum is not None:
        entry["min"] = minimum
    if kind == "boolean":
        entry.update(trueValue="true", falseValue="false")
    entry["advanced"] = key not in BASIC
    return {"key": key, "input": entry}


def _kind(annotation: object) -> str:
    types = set(typing.get_args(annotation)) or {annotation}
    if bool in types:
        return "boolean"
    if types & {int, float} and not any(t is str or typing.get_origin(t) is typing.Literal for t in types):
        return "number"
    return "string"


def _choices(annotation: object) -> tuple[object, ...]:
    """The values of a Literal[...] (or Literal[...] | None) field, else ()."""
    kinds = [t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)]
    if kinds and all(typing.get_origin(t) is typing.Literal for t in kinds):
        return tuple(v for t in kinds for v in typing.get_args(t))
    return ()


def worker_inputs() -> list[dict[str, Any]]:
    entries = []
    for name, info in WorkerSettings.model_fields.items():
        names = [variable_name(name), *(a for a, f in ALIASES.items() if f == name)]
        key = names[-1]  # worker-vllm's name, where it has one
        others = [n for n in names if n != key]
        description = (info.description or "") + (f" Also read as {', '.join(others)}." if others else "")
        minimum = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
        kind = "huggingface" if name == "model" else _kind(info.annotation)
        entries.append(_input(key, kind, description, info.default, minimum, _choices(info.annotation)))
    for key, text in OTHER_VARIABLES.items():
        if key in SET_BY_RUNPOD:
            text = (
                f"{text} Leave it empty."
                if text.startswith("Set by RunPod")
                else f"Set by RunPod, leave it empty: {text}"
            )
        entries.append(_input(key, "string", text))
    return entries


def engine_inputs() -> list[dict[str, Any]]:
    from tpworker.vllm_bridge import arguments

    entries = []
    for name, kind in ENGINE_INPUTS.items():
        aliases = [a for a, f in VLLM_ALIASES.items() if f == name]
        help_text = " ".join(arguments.engine_arg_help(name).split()) or HELP[name]
        description = help_text.split(". ")[0].rstrip(".") + f". vLLM's --{name.replace('_', '-')}."
        if aliases:
            description += f" Also read as {', '.join(aliases)}."
        default = arguments.engine_arg_default(name)
        default = default if isinstance(default, (bool, int, float, str)) else None
        entries.append(_input(variable_name(name), kind, description, default))
    return entries


def hub_json() -> dict[str, Any]:
    return {
        "title": "tpworker: vLLM with tensor parallelism",
        "description": "Serve a Hugging Face LLM with vLLM, split across the GPUs of a worker by tensor "
        "parallelism (checked against the model before it loads). RunPod's native input, the OpenAI and "
        "Anthropic APIs and vLLM's other routes, streaming, and the same inputs and outputs as worker-vllm.",
        "type": "serverless",
        "category": "language",
        "config": {
            "runsOn": "GPU",
            "containerDiskInGb": 100,
            "gpuCount": 1,
            "gpuIds": "ADA_24,AMPERE_24,ADA_48_PRO,AMPERE_48,ADA_80_PRO,AMPERE_80,HOPPER_141",
            "presets": PRESETS,
            "env": worker_inputs() + engine_inputs(),
        },
    }


def render() -> str:
    return json.dumps(hub_json(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite .runpod/hub.json")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        HUB_JSON.parent.mkdir(exist_ok=True)
        HUB_JSON.write_text(text)
        return 0
    if not HUB_JSON.is_file() or HUB_JSON.read_text() != text:
        print("Stale: .runpod/hub.json. Run: python -m tpworker.config.runpodhub --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
