"""Why the default model's greedy chat answer depends on the CPU in bfloat16: the first token's margin.

Greedy chat "What is the capital of France?" on SmolLM2-135M-Instruct starts with "The" ("The capital of
France is Paris.") or with "L" ("L'Étoile, la Marseillaise, ..."). This script prints, for the same prompt
token ids, the first answer token's top log-probabilities and the margin logprob("The") - logprob("L"):
- from transformers (float32 and bfloat16, the padded and the original model): the reference;
- from vLLM's CPU engine under settings that change which kernels run or in what order they sum: dtype,
  tensor parallelism, the threads per rank, oneDNN's instruction set (ONEDNN_MAX_CPU_ISA: the linear layers),
  the attention's split-KV decoding (VLLM_CPU_ATTN_SPLIT_KV), compiled vs eager mode.
On a CPU with AMX, vLLM's bfloat16 path differs by itself: linear layers up to 1 MiB of weights run
sgl-kernel's AMX GEMM instead of oneDNN, and attention runs its "amx" kernel instead of "vec".
Each vLLM run is a fresh process, so that the variables reach oneDNN and vLLM before they initialise.

    .venv/bin/python tools/bf16_first_token.py            # every variant (~6 min on 2 cores)
    .venv/bin/python tools/bf16_first_token.py --quick    # transformers + vLLM float32/bfloat16 TP=1

It prints the machine's CPU model and the vector extensions vLLM's CPU kernels choose between, because the
answer is a property of the machine: see the README's "Known issues".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
CANDIDATES = ("The", "L")  # the two first tokens seen across machines
TOP = 5
ANSWER_TOKENS = 16

# name -> (model: padded|original, engine arguments, extra environment)
VLLM_VARIANTS = {
    "float32 TP=1": ("padded", {"dtype": "float32"}, {}),
    "bfloat16 TP=1": ("padded", {"dtype": "bfloat16"}, {}),
    "bfloat16 TP=1 original model": ("original", {"dtype": "bfloat16"}, {}),
    "bfloat16 TP=1 one thread": ("padded", {"dtype": "bfloat16"}, {"VLLM_CPU_OMP_THREADS_BIND": "0"}),
    "bfloat16 TP=1 oneDNN AVX512_CORE": ("padded", {"dtype": "bfloat16"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
    "bfloat16 TP=1 oneDNN AVX2": ("padded", {"dtype": "bfloat16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "bfloat16 TP=1 attention without split KV": ("padded", {"dtype": "bfloat16"}, {"VLLM_CPU_ATTN_SPLIT_KV": "0"}),
    "bfloat16 TP=2": ("padded", {"dtype": "bfloat16", "tensor_parallel_size": 2}, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}),
    "bfloat16 TP=1 compiled": ("padded", {"dtype": "bfloat16", "enforce_eager": False}, {}),
}
QUICK = ("float32 TP=1", "bfloat16 TP=1")


def machine() -> dict:
    import torch

    from tpworker.planning import hardware

    return {
        "cpu": hardware.cpu_model(),
        "vector_extensions": hardware.cpu_vector_extensions(),
        "torch_sees_amx": torch.cpu._is_amx_tile_supported(),
    }


def model_folders() -> dict[str, Path]:
    from tpworker.config.settings import models_cache_dir
    from tpworker.models import default_model

    original, padded = default_model.ensure_built(models_cache_dir())
    return {"original": original, "padded": padded}


def prompt_ids(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


def summary(tokenizer, logprobs: dict[int, float], answer_ids: list[int]) -> dict:
    """Top tokens, the margin between the two candidates, and the greedy answer's start."""
    top = sorted(logprobs.items(), key=lambda kv: -kv[1])[:TOP]
    by_text = {tokenizer.decode([i]): lp for i, lp in logprobs.items()}
    margin = None
    if all(c in by_text for c in CANDIDATES):
        margin = round(by_text[CANDIDATES[0]] - by_text[CANDIDATES[1]], 4)
    return {
        "top": [(tokenizer.decode([i]), round(lp, 4)) for i, lp in top],
        "margin_The_minus_L": margin,
        "answer": tokenizer.decode(answer_ids),
    }


def candidate_logits(folders: dict[str, Path]) -> str:
    """The two candidates' float32 logits, and what bfloat16 can tell apart at their size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["padded"])
    model = AutoModelForCausalLM.from_pretrained(folders["padded"], dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids(folders["padded"])])).logits[0, -1]
    parts = []
    for text in CANDIDATES:
        token_id = tokenizer.convert_tokens_to_ids(text)
        value = logits[token_id].item()
        parts.append(
            f"{text!r} (id {token_id}) {value:.4f} -> bfloat16 {torch.tensor(value).to(torch.bfloat16).item()}"
        )
    size = logits[tokenizer.convert_tokens_to_ids(CANDIDATES[0])].abs().item()
    step = 2.0 ** (torch.tensor(size).log2().floor().item() - 7)  # bfloat16 keeps 8 significant bits
    return (
        f"first-token logits in float32: {'; '.join(parts)}. bfloat16's step at this size: {step}; on a tie "
        f"greedy takes the lower token id."
    )


def transformers_runs(folders: dict[str, Path]) -> dict[str, dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = {}
    tokenizer = AutoTokenizer.from_pretrained(folders["padded"])
    ids = torch.tensor([prompt_ids(folders["padded"])])
    for name, folder in folders.items():
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
            with torch.no_grad():
                logits = model(ids).logits[0, -1].float()
                answer = model.generate(ids, max_new_tokens=ANSWER_TOKENS, do_sample=False)[0, ids.shape[1] :]
            logprobs = torch.log_softmax(logits, dim=-1)
            values, indices = logprobs.topk(50)
            results[f"transformers {str(dtype).split('.')[-1]} {name}"] = summary(
                tokenizer, dict(zip(indices.tolist(), values.tolist(), strict=True)), answer.tolist()
            )
    return results


def vllm_child(variant: str) -> None:
    """One vLLM run, in this process; prints one JSON line."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    which, engine_args, _ = VLLM_VARIANTS[variant]
    folders = model_folders()
    args = {
        "enforce_eager": True,
        "max_model_len": 512,
        "kv_cache_memory_bytes": 1 << 30,
        "max_logprobs": 50,
        **engine_args,
    }
    llm = LLM(model=str(folders[which]), **args)
    tokenizer = AutoTokenizer.from_pretrained(folders["padded"])
    params = SamplingParams(temperature=0, max_tokens=ANSWER_TOKENS, logprobs=50)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids(folders["padded"]))], params)[0].outputs[0]
    first = {token_id: entry.logprob for token_id, entry in out.logprobs[0].items()}
    print("RESULT " + json.dumps(summary(tokenizer, first, list(out.token_ids))), flush=True)


def vllm_run(variant: str) -> dict:
    _, _, env = VLLM_VARIANTS[variant]
    done = subprocess.run(
        [sys.executable, __file__, "--child", variant],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": (done.stdout + done.stderr)[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="transformers and vLLM float32/bfloat16 at TP=1 only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    options = parser.parse_args()
    if options.child:
        vllm_child(options.child)
        return 0
    report = {"machine": machine(), "runs": {}}
    print(json.dumps(report["machine"]))
    report["logits"] = candidate_logits(model_folders())
    print(report["logits"])
    report["runs"].update(transformers_runs(model_folders()))
    for variant in QUICK if options.quick else VLLM_VARIANTS:
        report["runs"][f"vLLM {variant}"] = vllm_run(variant)
    width = max(map(len, report["runs"]))
    for name, run in report["runs"].items():
        if "error" in run:
            print(f"{name:<{width}}  FAILED: {run['error'][-300:]}")
            continue
        top = ", ".join(f"{t!r} {lp:.3f}" for t, lp in run["top"])
        print(f"{name:<{width}}  margin {run['margin_The_minus_L']!s:>7}  top: {top}  answer: {run['answer']!r}")
    if options.json:
        options.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
