"""What the OpenAI layer's build needs and the engine does not, prepared beside the engine's start
(vllm_bridge.openai_server.prepare, run by serving.engine while vLLM's processes start): vLLM's own
config and renderer for the default model, without an engine."""

from __future__ import annotations

import threading
import time

import pytest

from tpworker.serving import engine as engine_module
from tpworker.vllm_bridge import async_llm, openai_server


@pytest.fixture(scope="module")
def vllm_config(models):
    from vllm import AsyncEngineArgs

    return async_llm.create_engine_config(AsyncEngineArgs(model=str(models[0]), max_model_len=2048))


@pytest.fixture
def processor_loads(monkeypatch):
    """How many times vLLM loaded a model's processor (to look for its chat template), from an empty cache."""
    from vllm.renderers import hf
    from vllm.transformers_utils import processor

    monkeypatch.setattr(hf, "_PROCESSOR_CHAT_TEMPLATES", {})
    processor.cached_get_processor.cache_clear()
    return lambda: processor.cached_get_processor.cache_info().misses


def test_prepared_the_build_s_chat_template_warm_up_loads_no_processor(vllm_config, processor_loads):
    """The renderer AsyncLLM builds, warmed up as vLLM's OpenAI layer does when it is built, finds
    what prepare() looked up: the processor is loaded once, beside the start, not on the event loop."""
    from vllm.renderers.params import ChatParams
    from vllm.renderers.registry import renderer_from_config

    openai_server.prepare(vllm_config.model_config, None, "m", ["m"], {})
    assert processor_loads() == 1
    renderer = renderer_from_config(vllm_config)
    renderer.warmup(ChatParams(chat_template=None, chat_template_content_format="auto", chat_template_kwargs={}))
    assert processor_loads() == 1


def test_without_preparing_the_warm_up_loads_the_processor_itself(vllm_config, processor_loads):
    """The control: what the build did before (and does when the preparation failed)."""
    from vllm.renderers.params import ChatParams
    from vllm.renderers.registry import renderer_from_config

    renderer = renderer_from_config(vllm_config)
    renderer.warmup(ChatParams(chat_template=None, chat_template_content_format="auto", chat_template_kwargs={}))
    assert processor_loads() == 1


def test_a_given_chat_template_needs_no_processor(vllm_config, processor_loads):
    openai_server.prepare(vllm_config.model_config, "{{ messages[0]['content'] }}", "m", ["m"], {})
    assert processor_loads() == 0


def test_the_work_beside_the_start_waits_for_the_engine_s_processes_or_the_start_s_end(monkeypatch):
    """It starts once vLLM's processes are up (before that the main process builds vLLM's tokenizer
    itself) or the start has ended, and a failure only costs the time it would have saved."""
    processes: dict = {}
    monkeypatch.setattr(engine_module, "_engine_processes", lambda: processes)
    ran: list[str] = []

    def prepare_something(model_config):
        ran.append(model_config)

    started = threading.Event()
    done = engine_module._beside_the_start(prepare_something, "config", started)
    time.sleep(0.3)
    assert ran == [] and not done.done()
    processes["engine core"] = "VLLM::EngineCore"
    assert done.result(5) is None and ran == ["config"]

    def fail(model_config):
        raise OSError("no processor config")

    processes.clear()
    started.set()  # the start ended (or failed) before any engine process was seen
    assert engine_module._beside_the_start(fail, "config", started).result(5) is None


def _routes(app) -> set[str]:
    return {route.path for route in app.routes}


def test_a_generating_model_s_application_is_built_beside_the_start(vllm_config):
    """The application prepare() builds is the one the build uses when the engine serves ("generate",)
    (SmolLM2's tasks); for other tasks one is built then."""
    prepared = openai_server.prepare(vllm_config.model_config, None, "/models/smol", ["smol"], {})
    assert prepared.tasks == ("generate",)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/models"} <= _routes(prepared.app)
    assert (prepared.args.model, prepared.args.served_model_name) == ("/models/smol", ["smol"])
    app, args = openai_server.application(prepared, ("generate",), vllm_config.model_config, "/models/smol", [], {})
    assert (app, args) == (prepared.app, prepared.args)
    other, _ = openai_server.application(prepared, ("generate", "render"), vllm_config.model_config, "m", ["m"], {})
    assert other is not prepared.app and "/v1/chat/completions" in _routes(other)


def test_a_pooling_model_s_application_is_left_to_the_build(models):
    """Its routes depend on the pooling tasks the model has, which only the engine reports."""
    from vllm import AsyncEngineArgs

    config = async_llm.create_engine_config(
        AsyncEngineArgs(model=str(models[0]), max_model_len=2048, runner="pooling", convert="embed")
    )
    assert openai_server.prepare(config.model_config, None, "m", ["m"], {}) is None


KEEP_LOGGING = """
import logging, threading
from tpworker.config import logs
from tpworker.vllm_bridge import openai_server
logs.configure_logging()
root = logging.getLogger()
before = (root.level, [h.level for h in root.handlers])
set_to = []
original = logging.Logger.setLevel
def recording(logger, level):
    if logger is root:
        set_to.append(logging.getLevelName(level) if isinstance(level, int) else level)
    original(logger, level)
if KEEP:
    openai_server.keep_logging_through_the_server_import()
logging.Logger.setLevel = recording
import vllm.entrypoints.launchers.app as app_module
build = threading.Thread(target=lambda: app_module.build_app(openai_server._server_args({}, "m", ["m"]), ("generate",)))
build.start(); build.join()
print("ROOT", set_to, before == (root.level, [h.level for h in root.handlers]) or "levels changed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("keep", [True, False])
def test_the_build_in_another_thread_never_sets_the_root_logger_to_error(keep):
    """vLLM's server imports model_hosting_container_standards, which sets the root logger to ERROR
    when first imported. Imported first by keep_logging_through_the_server_import (on the thread that
    configured logging), the build in the thread beside the engine's start leaves it alone; without
    it (the control) the build sets it to ERROR, silencing the other threads' log lines meanwhile."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", f"KEEP = {keep}\n" + KEEP_LOGGING], capture_output=True, text=True, timeout=180
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("ROOT")), run.stdout + run.stderr[-2000:])
    assert line == "ROOT [] True" if keep else line.startswith("ROOT ['ERROR']"), line
