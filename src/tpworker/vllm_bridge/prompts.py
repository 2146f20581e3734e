"""Prompts into engine inputs with vLLM's renderer: the chat template, tokenization and the context
check vLLM's own server uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from vllm.engine.protocol import EngineClient
    from vllm.inputs import EngineInput
    from vllm.renderers.chat_utils import ChatCompletionMessageParam


async def render_chat(
    llm: EngineClient,
    messages: list[dict[str, Any]],
    chat_template: str | None,
    template_kwargs: dict[str, Any],
    max_model_len: int,
) -> EngineInput:
    """Apply the chat template (the model's, or `chat_template`) and tokenize: the engine input."""
    from vllm.renderers.params import ChatParams, TokenizeParams

    params = ChatParams(
        chat_template=chat_template, chat_template_kwargs={**template_kwargs, "add_generation_prompt": True}
    )
    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=False)
    # the job's JSON messages: vLLM's renderer parses them as its message params
    conversation = cast("list[ChatCompletionMessageParam]", messages)
    engine_input: EngineInput  # the renderer's methods leave their results unannotated
    _, (engine_input,) = await llm.renderer.render_chat_async([conversation], params, tokenize)
    return engine_input


async def render_text(llm: EngineClient, prompt: str, max_model_len: int) -> EngineInput:
    """Tokenize a plain prompt (special tokens added as the tokenizer does): the engine input."""
    from vllm.renderers.params import TokenizeParams

    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=True)
    engine_input: EngineInput  # the renderer's methods leave their results unannotated
    (engine_input,) = await llm.renderer.render_cmpl_async([{"prompt": prompt}], tokenize)
    return engine_input


def prompt_token_ids(engine_input: Mapping[str, Any]) -> list[int]:
    """The prompt's tokens (an EngineInput of a decoder-only model)."""
    return list(engine_input["prompt_token_ids"])
