"""Prompts into engine inputs with vLLM's renderer: the chat template, tokenization and the context
check vLLM's own server uses."""

from __future__ import annotations


async def render_chat(
    llm, messages: list[dict], chat_template: str | None, template_kwargs: dict, max_model_len: int
) -> dict:
    """Apply the chat template (the model's, or `chat_template`) and tokenize: the engine input."""
    from vllm.renderers.params import ChatParams, TokenizeParams

    params = ChatParams(
        chat_template=chat_template, chat_template_kwargs={**template_kwargs, "add_generation_prompt": True}
    )
    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=False)
    _, (engine_input,) = await llm.renderer.render_chat_async([messages], params, tokenize)
    return engine_input


async def render_text(llm, prompt: str, max_model_len: int) -> dict:
    """Tokenize a plain prompt (special tokens added as the tokenizer does): the engine input."""
    from vllm.renderers.params import TokenizeParams

    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=True)
    (engine_input,) = await llm.renderer.render_cmpl_async([{"prompt": prompt}], tokenize)
    return engine_input


def prompt_token_ids(engine_input: dict) -> list[int]:
    return list(engine_input["prompt_token_ids"])
