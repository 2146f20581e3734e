"""What every path is sent: the same prompts, lengths and greedy sampling, in rounds of
`concurrency` requests started together."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def sampling(self) -> dict:
        """The same for every path: exactly `output_tokens` tokens (ignore_eos), greedy."""
        return {"max_tokens": self.output_tokens, "ignore_eos": True, "temperature": 0.0}

    def to_json(self) -> dict:
        return {**asdict(self), "concurrency": list(self.concurrency)}

    @classmethod
    def from_json(cls, data: dict) -> Workload:
        return cls(**{**data, "concurrency": tuple(data["concurrency"])})


def prompt_body(tokenizer, tokens: int) -> str:
    """Text of `tokens` tokens (by the model's tokenizer), cut from FILLER repeated."""
    text = FILLER
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + FILLER
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:tokens])


def prompt(body: str, tag: str) -> str:
    """Every request starts with its own tag, so that vLLM's prefix cache never serves one
    request's prompt from another's (that would make later paths look faster)."""
    return f"[{tag}] {body}"
