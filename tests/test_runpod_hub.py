"""The RunPod Hub files: .runpod/hub.json (generated from the settings) and .runpod/tests.json
(the Hub's release tests), checked against the shape RunPod documents for them and against the
settings: every variable the worker reads is offered, and the tests' environment and inputs are
ones the worker accepts. (tests/test_baked_worker.py runs the release tests on the real engine.)"""

from __future__ import annotations

import json

import jsonschema
import pytest

from tpworker import app, cli
from tpworker.config import envdocs, runpodhub
from tpworker.config.settings import load_settings
from tpworker.vllm_bridge import arguments

from conftest import ROOT

HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())

# The shapes of RunPod's Hub publishing guide (hub.json and tests.json reference).
_INPUT = {
    "type": "object",
    "required": ["name", "type", "description"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "type": {"enum": ["string", "number", "boolean", "huggingface"]},
        "description": {"type": "string", "minLength": 1},
        "default": {"type": ["string", "number", "boolean"]},
        "advanced": {"type": "boolean"},
        "min": {"type": "number"},
        "max": {"type": "number"},
        "trueValue": {"type": "string"},
        "falseValue": {"type": "string"},
        "options": {"type": "array", "items": {"type": "object", "required": ["label", "value"]}},
    },
}
HUB_SCHEMA = {
    "type": "object",
    "required": ["title", "description", "type", "category", "config"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "type": {"const": "serverless"},
        "category": {"enum": ["audio", "embedding", "language", "video", "image"]},
        "iconUrl": {"type": "string", "format": "uri"},
        "config": {
            "type": "object",
            "required": ["runsOn", "containerDiskInGb", "gpuCount"],
            "additionalProperties": False,
            "properties": {
                "runsOn": {"const": "GPU"},
                "containerDiskInGb": {"type": "integer", "minimum": 1},
                "gpuCount": {"type": "integer", "minimum": 1},
                "gpuIds": {"type": "string", "pattern": r"^-?[A-Za-z0-9_ ]+(,-?[A-Za-z0-9_ ]+)*$"},
                "allowedCudaVersions": {"type": "array", "items": {"type": "string"}},
                "presets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "defaults"],
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "defaults": {"type": "object"}},
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key"],
                        "additionalProperties": False,
                        "properties": {
                            "key": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                            "value": {"type": "string"},
                            "input": _INPUT,
                        },
                        "oneOf": [{"required": ["value"]}, {"required": ["input"]}],
                    },
                },
            },
        },
    },
}
TESTS_SCHEMA = {
    "type": "object",
    "required": ["tests", "config"],
    "additionalProperties": False,
    "properties": {
        "tests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "input"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "input": {"type": "object"},
                    "timeout": {"type": "integer", "minimum": 1},
                },
            },
        },
        "config": {
            "type": "object",
            "required": ["gpuTypeId", "gpuCount"],
            "additionalProperties": False,
            "properties": {
                "gpuTypeId": {"type": "string"},
                "gpuCount": {"type": "integer", "minimum": 1},
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "value"],
                        "additionalProperties": False,
                        "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                    },
                },
                "allowedCudaVersions": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}


def test_hub_json_is_generated_from_the_settings():
    assert runpodhub.main([]) == 0, "run: python -m tpworker.config.envdocs --write"


@pytest.mark.parametrize("document, schema", [(HUB, HUB_SCHEMA), (TESTS, TESTS_SCHEMA)], ids=["hub.json", "tests.json"])
def test_the_files_have_the_shape_runpod_documents(document, schema):
    jsonschema.validate(document, schema)


def test_the_schemas_refuse_what_the_hub_would_refuse():
    wrong = json.loads(json.dumps(HUB))
    wrong["config"]["env"][0]["input"]["type"] = "integer"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, HUB_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tests": [{"name": "x", "input": {}, "timeout": "5s"}], "config": {}}, TESTS_SCHEMA)


def test_every_variable_the_worker_reads_is_offered_on_the_hub_and_in_the_readme():
    entries = {e["key"]: e["input"] for e in HUB["config"]["env"]}
    readme = (ROOT / "README.md").read_text()
    for names, _, _ in envdocs.worker_rows():
        variables = names.replace("`", "").split(" / ")
        keys = [v for v in variables if v in entries]
        assert len(keys) == 1, f"{variables}: one of them should be a hub.json input, found {keys}"
        for other in set(variables) - set(keys):
            assert other in entries[keys[0]]["description"], f"{other} is not named beside {keys[0]}"
        for variable in variables:
            assert f"`{variable}`" in readme, variable


def test_engine_arguments_on_the_hub_are_real_ones_with_vllms_defaults():
    names = set(arguments.engine_arg_names())
    worker = {v for row in envdocs.worker_rows() for v in row[0].replace("`", "").split(" / ")}
    for key, entry in ((e["key"], e["input"]) for e in HUB["config"]["env"] if e["key"] not in worker):
        assert key.lower() in names, key
        default = arguments.engine_arg_default(key.lower())
        assert entry.get("default") == (default if default not in (None, "") else None), key


def test_presets_and_release_test_settings_are_accepted_by_the_worker():
    for preset in HUB["config"]["presets"]:
        settings = load_settings({k: str(v) for k, v in preset["defaults"].items()})
        settings.vllm_args()  # converts every vLLM variable as `vllm serve` would; raises if one is bad
    env = {e["key"]: e["value"] for e in TESTS["config"]["env"]}
    settings = load_settings(env)
    assert set(env) <= set(settings.sources.values()) | {v.upper() for v in settings.vllm_args()}
    assert settings.worker.model == "Qwen/Qwen2.5-0.5B-Instruct"  # small, public, on the hub
    assert settings.worker.tensor_parallel_auto  # the worker chooses: every GPU it has, when the model splits


def test_release_tests_run_tensor_parallel_on_two_gpus(capsys):
    """The Hub runs the release tests on `gpuCount` real GPUs: 2, and the model's heads split by 2, so the
    automatic choice is TP=2 there (planned here from the model's config.json, GPUs given as numbers)."""
    config = TESTS["config"]
    assert config["gpuCount"] == 2
    fixture = ROOT / "tests" / "fixtures" / "configs" / "qwen2.5-0.5b-instruct.json"
    plan = ["plan", str(fixture), "--gpus", "2", "--gpu-memory", "24", "--max-model-len", "2048", "--json"]
    assert cli.main(plan) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid_sizes"] == [1, 2] and report["auto_on_gpus"] == 2
    assert all(row["weights_fit"] for row in report["rows"])


def test_release_tests_are_a_native_prompt_a_streamed_chat_and_an_openai_chat_the_worker_accepts():
    settings = load_settings({e["key"]: e["value"] for e in TESTS["config"]["env"]})
    inputs = {t["name"]: t["input"] for t in TESTS["tests"]}
    assert "prompt" in inputs["native_prompt"] and not inputs["native_prompt"].get("stream")
    assert inputs["streamed_chat"]["stream"] is True and "messages" in inputs["streamed_chat"]
    assert inputs["openai_chat"]["openai_route"] == "/v1/chat/completions"
    assert inputs["openai_chat"]["openai_input"]["model"] == settings.worker.model  # the served name
    for name, job_input in inputs.items():
        assert app._refusal({"id": name, "input": job_input}, settings) is None, name
