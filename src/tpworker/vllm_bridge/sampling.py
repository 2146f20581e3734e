"""SamplingParams from a job's JSON values, validated by pydantic and vLLM; vLLM's request errors by name."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import TypeAdapter
    from vllm import SamplingParams

# SamplingParams fields a job may not set: the worker sets them, or they are engine internals.
INTERNAL_SAMPLING_FIELDS = frozenset(
    {"output_kind", "skip_clone", "output_text_buffer_length", "routed_experts_prompt_start", "trace_decode_token_ids"}
)


class InvalidParameter(ValueError):
    """A request value vLLM refuses; `parameter` names it (None when vLLM does not say)."""

    def __init__(self, message: str, parameter: str | None):
        super().__init__(message)
        self.parameter = parameter


def sampling_param_names() -> list[str]:
    from vllm import SamplingParams

    return sorted(
        f for f in SamplingParams.__struct_fields__ if not f.startswith("_") and f not in INTERNAL_SAMPLING_FIELDS
    )


@functools.cache
def _sampling_params_adapter() -> TypeAdapter[SamplingParams]:
    """Built once: building pydantic's adapter for SamplingParams costs far more than validating with it,
    and would be paid per job otherwise (results/start/figures.md)."""
    from pydantic import TypeAdapter
    from vllm import SamplingParams

    return TypeAdapter(SamplingParams)


def sampling_params(values: dict[str, Any]) -> SamplingParams:
    """SamplingParams from plain JSON values, type-checked by pydantic (vLLM's SamplingParams
    supports it) and range-checked by vLLM. Raises pydantic's ValidationError or InvalidParameter."""
    from pydantic import ValidationError
    from vllm.exceptions import VLLMValidationError

    try:
        return _sampling_params_adapter().validate_python(values)
    except ValidationError:  # a ValueError too: the caller reports pydantic's errors by field
        raise
    except (VLLMValidationError, ValueError) as e:  # vLLM's range checks
        raise as_invalid_parameter(e) or InvalidParameter(str(e), None) from None


def as_invalid_parameter(error: BaseException) -> InvalidParameter | None:
    """vLLM's 'the request is wrong' errors (raised while validating or generating) as
    InvalidParameter, None for any other error."""
    from vllm.exceptions import VLLMValidationError

    if isinstance(error, VLLMValidationError):
        return InvalidParameter(str(error).split(" (parameter=")[0], getattr(error, "parameter", None))
    return None


def is_grammar_error(message: str) -> bool:
    """A structured-output schema or grammar that does not compile, in any of vLLM's backends' words
    ("Grammar error: ...", "Invalid grammar specification.", "Invalid JSON grammar specification.").
    vLLM names no parameter for it; the worker attributes it to the field that carried the grammar."""
    return "grammar" in message.lower()
