"""What every path is sent: the same prompts, lengths and greedy sampling, in rounds of
`concurrency` requests started together."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

# Tokens the unique tag at the head of each prompt takes, roughly; the body makes up the rest.
TAG_TOKENS = 12

# Plain prose for prompt bodies (any text works; this one tokenizes like ordinary English).
FILLER = (
    "The river town woke slowly. Bakers pulled the first loaves from brick ovens, fishermen "
    "counted their nets on the pier, and a bell in the old tower rang seven times. Children "
    "ran past the market stalls where farmers stacked apples, onions and round yellow cheeses. "
    "By noon the square was full of voices, carts and the smell of bread and smoke."
)


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 128
    output_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 8, 32)
    stream: bool = True
    warmup: int = 1  # unmeasured rounds per path, at the highest concurrency, before measuring
    repetitions: int = 3  # measured rounds per path and concurrency level

    def sampling(self) -> dict[str, Any]:
        """The same for every path: exactly `output_tokens` tokens (ignore_eos), greedy."""
        return {"max_tokens": self.output_tokens, "ignore_eos": True, "temperature": 0.0}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "concurrency": list(self.concurrency)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**{**data, "concurrency": tuple(data["concurrency"])})


class Tokenizer(Protocol):
    """What prompt_body uses of a tokenizer (transformers' or vLLM's)."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str | list[str]: ...


def prompt_body(tokenizer: Tokenizer, tokens: int) -> str:
    """Text of `tokens` tokens (by the model's tokenizer), cut from FILLER repeated."""
    text = FILLER
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + FILLER
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return cast(str, tokenizer.decode(ids))  # one sequence of ids decodes to one string


def prompt(body: str, tag: str) -> str:
    """Every request starts with its own tag, so that vLLM's prefix cache never serves one
    request's prompt from another's (that would make later paths look faster)."""
    return f"[{tag}] {body}"
