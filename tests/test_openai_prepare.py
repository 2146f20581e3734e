"""What the OpenAI layer's build needs and the engine does not, prepared beside the engine's start
(vllm_bridge.openai_server.prepare, run by serving.engine while vLLM's processes start): vLLM's own
config and renderer for the default model, without an engine."""

from __future__ import annotations

import threading
import time

import pytest

from tpworker.serving import engine as engine_module
from tpworker.vllm_bridge import async_engine, openai_server


@pytest.fixture(scope="module")
def vllm_config(models):
    from vllm import AsyncEngineArgs

    return async_engine.create_engine_config(AsyncEngineArgs(model=str(models[0]), max_model_len=2048))


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

    openai_server.prepare(vllm_config.model_config, chat_template=None)
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
    openai_server.prepare(vllm_config.model_config, chat_template="{{ messages[0]['content'] }}")
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
