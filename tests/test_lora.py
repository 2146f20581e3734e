"""LoRA adapters (ENABLE_LORA, LORA_MODULES), on the real CPU engine, against transformers + peft.

The tests make an adapter for the default model with peft (rank 8 on q_proj, v_proj and down_proj,
every weight non-zero and random with a fixed seed) and compute its reference answer with
transformers on the merged weights (float32, greedy). The worker, through `tpworker dev`, must give
the same tokens for a request that names the adapter (OpenAI form and native form), the base model's
own answer for one that does not, and a 404 naming what is served for an unknown name. RunPod's cloud
is the only stand-in (tpworker dev plays its part)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import DevEndpoint, text_of, token_ids_of

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
ADAPTER = "capitals-lora"
PROMPTS = ["The capital of France is", "Once upon a time,"]
TOKENS = 24


def make_adapter(base, folder) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False, lora_dropout=0.0
    )
    adapted = get_peft_model(model, config)  # init_lora_weights=False: A and B both random, so the adapter acts
    adapted.save_pretrained(folder)


def peft_reference(base, folder) -> dict[str, list[int]]:
    """Greedy tokens of each prompt from transformers with the adapter merged into the weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    answers = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = merged.generate(ids, max_new_tokens=TOKENS, do_sample=False)
        answers[prompt] = out[0, ids.shape[1] :].tolist()
    return answers


@pytest.fixture(scope="module")
def adapter(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    make_adapter(models[1], folder)
    return folder, peft_reference(models[1], folder)


@pytest.fixture(scope="module")
def dev(adapter, tmp_path_factory):
    folder, _ = adapter
    endpoint = DevEndpoint(
        tmp_path_factory.mktemp("dev") / "dev.log",
        ENABLE_LORA="true",
        MAX_LORA_RANK="8",
        LORA_MODULES=f"{ADAPTER}={folder}",
    )
    yield endpoint
    endpoint.close()


def completion(dev, model: str, prompt: str) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "return_token_ids": True}
    answer = httpx.post(f"{dev.url}/openai/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]


def test_the_adapter_answers_as_transformers_and_peft_on_the_merged_weights(dev, adapter):
    _, reference = adapter
    for prompt in PROMPTS:
        adapted, base = completion(dev, ADAPTER, prompt), completion(dev, MODEL, prompt)
        assert adapted["token_ids"] == reference[prompt]
        assert base["token_ids"][:8] != adapted["token_ids"][:8]  # the adapter changes the answer


def test_a_native_job_names_the_adapter_with_model(dev, adapter):
    _, reference = adapter
    params = {"max_tokens": TOKENS, "temperature": 0, "logprobs": 0}
    for prompt in PROMPTS:
        done = dev.wait_status(dev.run({"prompt": prompt, "model": ADAPTER, "sampling_params": params}))
        assert done["status"] == "COMPLETED", done
        assert token_ids_of(done["output"]) == reference[prompt]
    base = dev.wait_status(dev.run({"prompt": PROMPTS[0], "sampling_params": params}))
    named = dev.wait_status(dev.run({"prompt": PROMPTS[0], "model": MODEL, "sampling_params": params}))
    assert text_of(base["output"]) == text_of(named["output"]) != ""
    assert token_ids_of(base["output"]) == completion(dev, MODEL, PROMPTS[0])["token_ids"]


def test_the_model_list_shows_the_adapter_and_an_unknown_name_is_a_404_naming_both(dev):
    listing = httpx.get(f"{dev.url}/openai/v1/models", timeout=60).json()["data"]
    assert [(m["id"], m["parent"]) for m in listing] == [(MODEL, None), (ADAPTER, MODEL)]
    body = {"model": "no-such-lora", "prompt": "Hi", "max_tokens": 2}
    answer = httpx.post(f"{dev.url}/openai/v1/completions", json=body, timeout=60)
    assert answer.status_code == 404 and MODEL in answer.text and ADAPTER in answer.text
    refused = dev.wait_status(dev.run({"prompt": "Hi", "model": "no-such-lora"}))
    assert refused["status"] == "FAILED" and "'no-such-lora'" in refused["error"] and ADAPTER in refused["error"]


def plan_with(models, tmp_path, **env):
    import os

    from tpworker.config.settings import load_settings
    from tpworker.startup.plan import plan_start

    from conftest import ENGINE_ENV

    base = {**os.environ, **ENGINE_ENV, "MODEL_NAME": str(models[1]), "CUDA_VISIBLE_DEVICES": ""}
    base.update(BASE_PATH=str(tmp_path / "volume"), MODEL_MANIFEST=str(tmp_path / "models" / "manifest.json"))
    return plan_start(load_settings({**base, **env}))


def test_adapters_are_found_like_the_model_before_anything_loads(models, adapter, tmp_path, caplog):
    """A hub id is downloaded into the volume's hub cache (a local hub here) and served from the folder;
    LoRA is turned on, and the rank limit follows the adapter; offline, a missing adapter is named."""
    import logging

    from tpworker.errors import StartRefused
    from tpworker.startup.model_and_layout import StartError

    from hubserver import FakeHub

    folder, _ = adapter
    (tmp_path / "volume").mkdir()
    with FakeHub() as hub, caplog.at_level(logging.INFO):
        hub.add_repo("org/capitals-lora", folder)
        plan = plan_with(models, tmp_path, LORA_MODULES=f"{ADAPTER}=org/capitals-lora", HF_ENDPOINT=hub.url)
    (module,) = plan.openai_options["lora_modules"]
    assert module.name == ADAPTER and (tmp_path / "volume" / "huggingface-cache" / "hub") in Path(module.path).parents
    assert (Path(module.path) / "adapter_model.safetensors").is_file()
    assert plan.engine_args["enable_lora"] is True and "max_lora_rank" not in plan.engine_args  # rank 8 <= 16
    assert "downloaded from the hub" in caplog.text
    # the next start finds it on the volume, offline
    again = plan_with(models, tmp_path, LORA_MODULES=f"{ADAPTER}=org/capitals-lora", HF_HUB_OFFLINE="1")
    assert again.openai_options["lora_modules"][0].path == module.path
    with pytest.raises(StartRefused, match=r"adapter other .*org/other-lora.*not available offline.*HF_HUB_OFFLINE"):
        plan_with(models, tmp_path, LORA_MODULES="other=org/other-lora", HF_HUB_OFFLINE="1")
    with pytest.raises(StartError, match=r"rank 8, above MAX_LORA_RANK=1\. Set MAX_LORA_RANK to at least 8"):
        plan_with(models, tmp_path, LORA_MODULES=f"{ADAPTER}={folder}", MAX_LORA_RANK="1")
    as_json = json.dumps({"name": ADAPTER, "path": str(folder)})  # worker-vllm's JSON form
    assert plan_with(models, tmp_path, LORA_MODULES=as_json).openai_options["lora_modules"][0].path == str(folder)


def test_adapters_baked_at_build_time_are_served_offline(models, adapter, tmp_path):
    """The image build's step (`tpworker download-adapters`, run with LORA_MODULES from the build argument)
    fills the hub cache beside the model's manifest; the worker finds the adapter there at start, offline,
    asking the hub nothing. A repository that holds no adapter stops the build, named."""
    import os
    import subprocess
    import sys

    from hubserver import FakeHub

    folder, _ = adapter
    modules = f"{ADAPTER}=org/capitals-lora"
    baked = tmp_path / "models" / "adapters"  # beside plan_with's MODEL_MANIFEST
    environment = {**os.environ, "MODEL_MANIFEST": str(tmp_path / "models" / "manifest.json")}
    environment.update(HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="")

    def download_adapters(hub, lora_modules):
        env = {**environment, "LORA_MODULES": lora_modules, "HF_ENDPOINT": hub.url}
        command = [sys.executable, "-m", "tpworker", "download-adapters"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    (tmp_path / "not-an-adapter").mkdir()
    (tmp_path / "not-an-adapter" / "README.md").write_text("no weights here")
    with FakeHub() as hub:
        commit = hub.add_repo("org/capitals-lora", folder)
        hub.add_repo("org/not-an-adapter", tmp_path / "not-an-adapter")
        done = download_adapters(hub, modules)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"LoRA adapter {ADAPTER}: org/capitals-lora at commit {commit[:12]} baked into {baked}" in done.stdout
        assert "rank 8" in done.stdout
        asked = len(hub.requests)
        plan = plan_with(models, tmp_path, LORA_MODULES=modules, HF_HUB_OFFLINE="1", HF_ENDPOINT=hub.url)
        assert len(hub.requests) == asked, [r.path for r in hub.requests[asked:]]
        refused = download_adapters(hub, "other=org/not-an-adapter")
    (module,) = plan.openai_options["lora_modules"]
    assert baked in Path(module.path).parents and (Path(module.path) / "adapter_model.safetensors").is_file()
    assert refused.returncode == 2
    assert "org/not-an-adapter is not a peft LoRA adapter: no adapter_config.json" in refused.stderr
