"""Environment -> settings: conversions, aliases, and one clear line per bad variable."""

from __future__ import annotations

import dataclasses

import pytest

from tpworker.config.settings import SettingsError, load_settings
from tpworker.config.variables import WorkerSettings, masked
from tpworker.vllm_bridge import arguments


def problems(env: dict) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(env).vllm_args()
    return caught.value.problems


def test_tensor_parallel_size_that_is_not_a_number_is_refused_with_the_accepted_values():
    (line,) = problems({"TENSOR_PARALLEL_SIZE": "two"})
    assert line.startswith("TENSOR_PARALLEL_SIZE='two' is not valid")
    assert "an integer >= 1, or auto" in line


def test_tensor_parallel_size_auto_and_numbers():
    assert load_settings({"TENSOR_PARALLEL_SIZE": "Auto"}).worker.tensor_parallel_auto
    assert load_settings({}).worker.tensor_parallel_auto
    assert load_settings({"TENSOR_PARALLEL_SIZE": "4"}).worker.tensor_parallel_size == 4
    assert "at least 1" in problems({"TENSOR_PARALLEL_SIZE": "0"})[0]


def test_gpu_memory_utilization_above_one_is_refused_by_vllms_own_bound():
    (line,) = problems({"GPU_MEMORY_UTILIZATION": "1.5"})
    assert line.startswith("GPU_MEMORY_UTILIZATION='1.5' is not valid")
    assert "<= 1" in line and "\n" not in line


def test_engine_arguments_convert_as_vllm_serve_converts_them():
    args = load_settings(
        {
            "MAX_MODEL_LEN": "32k",
            "ENFORCE_EAGER": "false",
            "ENABLE_PREFIX_CACHING": "yes",
            "DTYPE": "float32",
            "SERVED_MODEL_NAME": "a b",
            "MAX_NUM_SEQS": "8",
            "HF_OVERRIDES": '{"rope_theta": 1000}',
            "GPU_MEMORY_UTILIZATION": "0.5",
        }
    ).vllm_args()
    assert args == {
        "max_model_len": 32000,
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "dtype": "float32",
        "served_model_name": ["a", "b"],
        "max_num_seqs": 8,
        "hf_overrides": {"rope_theta": 1000},
        "gpu_memory_utilization": 0.5,
    }
    assert load_settings({"SERVED_MODEL_NAME": '["x", "y"]'}).vllm_args()["served_model_name"] == ["x", "y"]


def test_bad_choices_booleans_and_json_each_name_their_variable():
    lines = problems({"DTYPE": "fp33", "ENFORCE_EAGER": "maybe", "COMPILATION_CONFIG": '{"mode": 9}'})
    assert len(lines) == 3
    by_variable = {line.split("=")[0]: line for line in lines}
    assert "one of auto, bfloat16" in by_variable["DTYPE"]
    assert "true or false" in by_variable["ENFORCE_EAGER"]
    assert "JSON object" in by_variable["COMPILATION_CONFIG"]
    assert all("\n" not in line for line in lines)


def test_every_engine_argument_has_a_variable():
    from vllm import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs) if not f.name.startswith("_")}
    settable = set(arguments.engine_arg_names()) | set(WorkerSettings.model_fields)
    # hf_token: huggingface_hub reads HF_TOKEN itself. The others have no command-line flag in
    # vLLM 0.32 (no way to set them in `vllm serve` either).
    assert fields - settable == {
        "hf_token",
        "tokens_only",
        "mamba_config",
        "model_weights",
        "enable_mm_processor_stats",
    }


def test_worker_vllm_aliases_and_conflicts():
    settings = load_settings({"MODEL_NAME": "org/model", "MODEL_REVISION": "abc", "TOKENIZER_NAME": "org/tok"})
    assert (settings.worker.model, settings.worker.revision, settings.worker.tokenizer) == (
        "org/model",
        "abc",
        "org/tok",
    )
    assert settings.source_of("model") == "MODEL_NAME"
    assert load_settings({"MODEL": "x", "MODEL_NAME": "x"}).worker.model == "x"
    with pytest.raises(SettingsError, match="MODEL='a' and MODEL_NAME='b' are both set"):
        load_settings({"MODEL": "a", "MODEL_NAME": "b"})


def test_worker_settings_defaults_bounds_and_all_problems_at_once():
    worker = load_settings({}).worker
    assert (worker.max_concurrency, worker.default_batch_size, worker.min_batch_size) == (30, 50, 1)
    with pytest.raises(SettingsError) as caught:
        load_settings({"MAX_CONCURRENCY": "0", "MIN_BATCH_SIZE": "x", "BATCH_SIZE_GROWTH_FACTOR": "0.5"})
    assert [line.split("=")[0] for line in caught.value.problems] == [
        "BATCH_SIZE_GROWTH_FACTOR",
        "MAX_CONCURRENCY",
        "MIN_BATCH_SIZE",
    ]


def test_secrets_are_masked():
    assert masked("HF_TOKEN", "hf_abc") == "***"
    assert masked("RUNPOD_AI_API_KEY", "k") == "***"
    assert masked("MODEL_NAME", "org/model") == "org/model"
    for name in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "MY_SECRET_THING", "VLLM_API_KEY"):
        assert masked(name, "s3cr3t") == "***", name
    for name in ("MAX_NUM_BATCHED_TOKENS", "LONG_PREFILL_TOKEN_THRESHOLD", "TOKENIZER_POOL_SIZE", "KEY_VALUE_X"):
        assert masked(name, "512") == "512", name  # counts and sizes of tokens are not secrets
    (line,) = problems({"MAX_CONCURRENCY": "x", "HF_TOKEN": "hf_secret"})
    assert "hf_secret" not in line


def test_openai_frontend_options_and_worker_vllm_names_for_them():
    options = load_settings(
        {
            "CUSTOM_CHAT_TEMPLATE": "{{ messages }}",
            "OPENAI_RESPONSE_ROLE": "bot",
            "ENABLE_AUTO_TOOL_CHOICE": "true",
            "TOOL_CALL_PARSER": "hermes",
            "LORA_MODULES": '[{"name": "sql", "path": "/loras/sql"}]',
        }
    ).vllm_args()
    assert options["chat_template"] == "{{ messages }}" and options["response_role"] == "bot"
    assert options["enable_auto_tool_choice"] is True and options["tool_call_parser"] == "hermes"
    assert options["lora_modules"][0].name == "sql"
    assert not arguments.is_engine_arg("tool_call_parser") and arguments.is_engine_arg("max_model_len")
    with pytest.raises(SettingsError, match="CHAT_TEMPLATE='a' and CUSTOM_CHAT_TEMPLATE='b'"):
        load_settings({"CHAT_TEMPLATE": "a", "CUSTOM_CHAT_TEMPLATE": "b"}).vllm_args()


def test_combinations_vllm_serve_refuses_stop_the_worker_at_start():
    (line,) = problems({"ENABLE_AUTO_TOOL_CHOICE": "true"})
    assert "ENABLE_AUTO_TOOL_CHOICE requires TOOL_CALL_PARSER" in line
    (line,) = problems({"TOOL_CALL_PARSER": "no-such-parser"})
    assert "TOOL_CALL_PARSER='no-such-parser' is not a vLLM tool parser" in line and "hermes" in line
    (line,) = problems({"REASONING_PARSER": "nope"})
    assert "deepseek_r1" in line


def test_vllm_config_file_and_extra_args_with_worker_vllms_precedence(tmp_path, caplog):
    """VLLM_CONFIG_FILE < the variables < VLLM_EXTRA_ARGS, each read by `vllm serve`'s own parser."""
    config = tmp_path / "serve.yaml"
    config.write_text("max-num-seqs: 7\nmax-model-len: 1024\nenable-prefix-caching: false\nport: 9000\n")
    settings = load_settings({"VLLM_CONFIG_FILE": str(config)})
    args = settings.vllm_args()
    assert (args["max_num_seqs"], args["max_model_len"], args["enable_prefix_caching"]) == (7, 1024, False)
    assert "port" not in args and "no use inside a worker (port)" in caplog.text
    assert settings.shown()["VLLM_CONFIG_FILE"] == str(config)
    args = load_settings({"VLLM_CONFIG_FILE": str(config), "MAX_NUM_SEQS": "9"}).vllm_args()
    assert (args["max_num_seqs"], args["max_model_len"]) == (9, 1024)  # the variable over the file
    args = load_settings(
        {
            "VLLM_CONFIG_FILE": str(config),
            "MAX_NUM_SEQS": "9",
            "VLLM_EXTRA_ARGS": "--max-num-seqs 11 --max-model-len=512 --compilation-config.mode 0",
        }
    ).vllm_args()
    assert (args["max_num_seqs"], args["max_model_len"]) == (11, 512)  # the flags over both
    assert args["compilation_config"].mode == 0


@pytest.mark.parametrize(
    "file_text,extra,words",
    [
        ("max-num-seqs: [oops\n", None, ["VLLM_CONFIG_FILE=", "serve.yaml", "YAML"]),
        ("max-num-seqs: many\n", None, ["VLLM_CONFIG_FILE=", "--max-num-seqs", "'many'"]),
        ("tensor-parallel-size: 2\n", None, ["VLLM_CONFIG_FILE=", "--tensor-parallel-size", "TENSOR_PARALLEL_SIZE"]),
        (None, "--max-num-seqs abc", ["VLLM_EXTRA_ARGS=", "--max-num-seqs", "'abc'"]),
        (None, "--no-such-flag 1", ["VLLM_EXTRA_ARGS=", "--no-such-flag"]),
        (None, "--gpu-memory-utilization 1.5", ["VLLM_EXTRA_ARGS=", "--gpu-memory-utilization", "<= 1"]),
        (None, "--max-num-seqs '3", ["VLLM_EXTRA_ARGS=", "quotation"]),
        (None, "meta-llama/Llama-3.1-8B -tp 2", ["VLLM_EXTRA_ARGS=", "the model", "MODEL_NAME"]),
    ],
)
def test_bad_vllm_config_file_or_extra_args_stop_the_start_naming_the_flag(tmp_path, file_text, extra, words):
    env = {}
    if file_text is not None:
        (tmp_path / "serve.yaml").write_text(file_text)
        env["VLLM_CONFIG_FILE"] = str(tmp_path / "serve.yaml")
    if extra is not None:
        env["VLLM_EXTRA_ARGS"] = extra
    with pytest.raises(SettingsError) as refused:
        load_settings(env).vllm_args()
    assert all(word in str(refused.value) for word in words), str(refused.value)


def test_a_missing_config_file_is_named():
    with pytest.raises(SettingsError, match=r"VLLM_CONFIG_FILE='/no/such/serve.yaml'.*No such file"):
        load_settings({"VLLM_CONFIG_FILE": "/no/such/serve.yaml"}).vllm_args()


def test_the_frontend_options_listed_are_vllms_own():
    """FRONTEND_FIELDS stands for vLLM's BaseFrontendArgs (not imported when no frontend option is
    set): a vLLM upgrade that adds or drops one fails here, naming it."""
    from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

    frontend = {f.name for f in dataclasses.fields(BaseFrontendArgs)} - arguments.engine_fields()
    assert arguments.FRONTEND_FIELDS == frontend, (
        f"missing {sorted(frontend - arguments.FRONTEND_FIELDS)}, gone {sorted(arguments.FRONTEND_FIELDS - frontend)}"
    )


def test_the_engines_half_of_the_parser_reads_each_engine_argument_as_vllm_serve_does():
    """Engine arguments are read by the parser AsyncEngineArgs registers alone; `vllm serve`'s whole
    parser must hold the same action for each (same kind, type, choices, default, arity)."""
    whole = arguments.serve_actions()
    engine_names = [n for n in arguments.engine_arg_names() if arguments.is_engine_arg(n)]
    assert len(engine_names) > 200
    for name in engine_names:
        ours, theirs = arguments.option_action(name), whole[name]
        assert type(ours) is type(theirs), name
        for attribute in ("choices", "default", "nargs", "const", "option_strings"):
            assert getattr(ours, attribute) == getattr(theirs, attribute), (name, attribute)
        # a converter vLLM makes per parser (a lambda) is the same code over the same values, not the same object
        assert _converter(ours.type) == _converter(theirs.type), name
    assert set(arguments.engine_arg_names()) == set(whole)


def _converter(function):
    if not hasattr(function, "__code__"):
        return function
    cells = [_converter(c.cell_contents) for c in function.__closure__ or ()]
    return function.__code__, cells


FRONTEND_IMPORTED = """
import sys
from tpworker.config.settings import load_settings

values = load_settings(dict(ENVIRON)).vllm_args()
print("RESULT", sorted(values), "vllm.entrypoints.launchers.cli_args" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"MAX_MODEL_LEN": "4k", "DTYPE": "float32", "REASONING_PARSER": "deepseek_r1"}, False),
        ({"MAX_MODEL_LEN": "4k", "TOOL_CALL_PARSER": "hermes"}, True),
    ],
)
def test_vllms_frontend_modules_are_imported_at_start_only_for_a_frontend_option(environ, expected):
    """Reading engine arguments alone leaves vLLM's server modules (0.4-0.9 s) to the OpenAI layer's build
    beside the engine's start; a frontend option is read, and checked, by `vllm serve`'s whole parser."""
    import subprocess
    import sys

    code = FRONTEND_IMPORTED.replace("ENVIRON", repr(environ))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT")), run.stdout + run.stderr[-2000:])
    names = sorted(n.lower() for n in environ)
    assert line == f"RESULT {names} {expected}", line
