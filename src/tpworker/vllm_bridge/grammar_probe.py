"""A job's structured-output specification, tried in a process of its own before the engine sees it.

vLLM compiles a specification in its engine core and, at every step of the request, fills the mask of the
tokens it allows, in the step itself: a specification that is costly to compile or to walk (a regex of
nested quantifiers, ((a*)*){50}b, costs more at every token) stalls every request on the engine, for
minutes. Here the specification goes through what the engine would do with it: vLLM's own checks
(SamplingParams.verify, which also chooses the backend as the engine would), the backend's compile
(vLLM's backend classes, built as its StructuredOutputManager builds them), then walks of up to `steps`
tokens each, filling the mask at every token as the engine does. The costly paths are those that keep an
ambiguous pattern open and feed it the most text ((a*)* after a hundred a's), so the first walk takes the
longest token allowed that does not let the text end (it tries the next longest, up to CANDIDATES, when one
does: into an optional field, around a loop); then WALKS - 1 walks take allowed tokens at random, longer ones
more often. The parent
kills this process when that takes too long (serving/structured_check.py). A specification whose mask
allows no token at all is reported: sampling from it cannot produce anything.

`serve` is the process's main loop: requests in, results out, over a multiprocessing connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import numpy as np
    import numpy.typing as npt
    import torch
    from vllm.config import VllmConfig
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.structured_output.backend_types import StructuredOutputBackend, StructuredOutputGrammar

log = logging.getLogger(__name__)

# The constraint fields of vLLM's StructuredOutputsParams, by the kind vLLM's key names.
FIELD_OF_KIND = {
    "JSON": "json",
    "JSON_OBJECT": "json_object",
    "REGEX": "regex",
    "GRAMMAR": "grammar",
    "CHOICE": "choice",
    "STRUCTURAL_TAG": "structural_tag",
}
ACCEPTS_NOTHING = "accepts no token: no text can match it"
# What a probe process imports, imported once by the fork server its processes are forked from.
PRELOAD = [__name__, "vllm.sampling_params", "vllm.v1.structured_output.backend_xgrammar"]
# cache_key's: (kind, specification, the options that change its grammar)
CacheKey: TypeAlias = tuple[str, str, tuple[bool, bool, str | None]]
WALKS = 3  # one that stays open, then random ones (seeded by the specification: the same every time)
CANDIDATES = 4  # tokens tried at each step of the walk that stays open


@dataclass(frozen=True)
class ProbeResult:
    field: str  # the constraint's field: regex, json, grammar, ...
    problem: str | None  # why the engine must not get it (None: it may)
    steps: int  # tokens walked
    seconds: float
    finished: bool  # the walk reached the grammar's end (more tokens would not cost more)


def constraint_field(structured_outputs: StructuredOutputsParams) -> str:
    """Which constraint a StructuredOutputsParams carries (regex, json, ...), by vLLM's own key."""
    from vllm.v1.structured_output.request import get_structured_output_key

    kind, _ = get_structured_output_key(structured_outputs)
    return FIELD_OF_KIND.get(kind.name, kind.name.lower())


def cache_key(structured_outputs: StructuredOutputsParams) -> CacheKey:
    """What decides a specification's cost: its constraint and the options that change its grammar."""
    from vllm.v1.structured_output.request import get_structured_output_key

    kind, spec = get_structured_output_key(structured_outputs)
    options = (
        structured_outputs.disable_any_whitespace,
        structured_outputs.disable_additional_properties,
        structured_outputs.whitespace_pattern,
    )
    return kind.name, spec, options


class GrammarProbe:
    def __init__(self, vllm_config: VllmConfig) -> None:
        import numpy as np
        from vllm.tokenizers.registry import cached_tokenizer_from_config

        self.config = vllm_config
        self.tokenizer: TokenizerLike = cached_tokenizer_from_config(vllm_config.model_config)
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.backends: dict[str, StructuredOutputBackend] = {}
        # Each token's length in characters of its vocabulary entry: the walk takes the longest allowed.
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(min(len(self.tokenizer), self.vocab_size))))
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        lengths[: len(pieces)] = [len(piece) if isinstance(piece, str) else 0 for piece in pieces]
        self.special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for token in self.special:
            if token < self.vocab_size:
                lengths[token] = 0  # taken only when nothing else is allowed (it usually ends the text)
        self.lengths: npt.NDArray[np.int64] = lengths

    def backend(self, name: str) -> StructuredOutputBackend:
        """vLLM's backend `name`, built as its StructuredOutputManager.grammar_init builds it."""
        if name not in self.backends:
            backend: type[StructuredOutputBackend]
            if name == "xgrammar":
                from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend as backend
            elif name == "guidance":
                from vllm.v1.structured_output.backend_guidance import GuidanceBackend as backend
            elif name == "outlines":
                from vllm.v1.structured_output.backend_outlines import OutlinesBackend as backend
            elif name == "lm-format-enforcer":
                from vllm.v1.structured_output.backend_lm_format_enforcer import LMFormatEnforcerBackend as backend
            else:
                raise ValueError(f"Unsupported structured output backend: {name}")
            self.backends[name] = backend(self.config, tokenizer=self.tokenizer, vocab_size=self.vocab_size)
        return self.backends[name]

    def check(self, structured_outputs: StructuredOutputsParams, steps: int) -> ProbeResult:
        """vLLM's checks, the compile and the walks of up to `steps` tokens; raises what vLLM raises for a
        specification it refuses (VLLMValidationError, or the backend's compile error)."""
        import zlib

        import numpy as np
        from vllm import SamplingParams
        from vllm.v1.structured_output.request import get_structured_output_key

        began = time.monotonic()
        field = constraint_field(structured_outputs)
        params = SamplingParams(structured_outputs=structured_outputs, max_tokens=max(steps, 1))
        config = self.config
        params.verify(config.model_config, config.speculative_config, config.structured_outputs_config, self.tokenizer)
        checked = cast("StructuredOutputsParams", params.structured_outputs)  # set above
        backend = self.backend(cast(str, checked._backend))  # verify() chose it
        key = get_structured_output_key(checked)
        random = np.random.default_rng(zlib.crc32(repr(key).encode()))
        walked, finished = 0, True
        for walk in range(WALKS):
            grammar = backend.compile_grammar(*key)  # the backend's compiler caches it after the first
            mask = backend.allocate_token_bitmask(1)
            tokens = self._open_walk(grammar, mask, steps) if walk == 0 else self._walk(grammar, mask, steps, random)
            if tokens == 0 and walk == 0 and not grammar.is_terminated():
                return ProbeResult(field, ACCEPTS_NOTHING, 0, time.monotonic() - began, False)
            walked, finished = max(walked, tokens), finished and tokens < steps
        return ProbeResult(field, None, walked, time.monotonic() - began, finished)

    def _allowed(self, grammar: StructuredOutputGrammar, mask: torch.Tensor) -> npt.NDArray[np.bool_]:
        """The mask the engine would apply now, as one boolean per token."""
        import numpy as np

        grammar.fill_bitmask(mask, 0)
        return np.unpackbits(mask[0].numpy().view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)

    def _may_end(self, grammar: StructuredOutputGrammar, allowed: npt.NDArray[np.bool_]) -> bool:
        return grammar.is_terminated() or bool((allowed & (self.lengths == 0)).any())

    def _open_walk(self, grammar: StructuredOutputGrammar, mask: torch.Tensor, steps: int) -> int:
        """Up to `steps` tokens, each the longest allowed after which the text cannot end yet (of the
        CANDIDATES longest; the longest when all of them let it end)."""
        import numpy as np

        allowed, walked = self._allowed(grammar, mask), 0
        while walked < steps and not grammar.is_terminated() and allowed.any():
            weights = np.where(allowed, self.lengths, 0)
            candidates = [int(t) for t in np.argsort(-weights)[:CANDIDATES] if weights[t] > 0]
            for index, token in enumerate(candidates or [int(np.flatnonzero(allowed)[0])]):
                if not grammar.accept_tokens("probe", [token]):
                    return walked
                after = self._allowed(grammar, mask) if not grammar.is_terminated() else allowed & False
                if not self._may_end(grammar, after) or index == len(candidates) - 1:
                    break
                grammar.rollback(1)  # it lets the text end: try the next longest
            allowed, walked = after, walked + 1
        return walked

    def _walk(
        self, grammar: StructuredOutputGrammar, mask: torch.Tensor, steps: int, random: np.random.Generator
    ) -> int:
        """Up to `steps` tokens drawn at random from those allowed, weighted by length."""
        import numpy as np

        walked = 0
        while walked < steps and not grammar.is_terminated():
            allowed = self._allowed(grammar, mask)
            if not allowed.any():
                break  # a dead end: the engine stops there too
            weights = np.where(allowed, self.lengths, 0)
            if not weights.any():  # only special tokens (the end): take one
                token = int(np.flatnonzero(allowed)[0])
            else:
                token = int(random.choice(len(weights), p=weights / weights.sum()))
            if not grammar.accept_tokens("probe", [token]):
                break
            walked += 1
        return walked


# (error text, the parameter vLLM names): a specification vLLM refuses
Refused: TypeAlias = tuple[str, str | None]


def serve(
    connection: Connection[
        tuple[str] | tuple[CacheKey, ProbeResult | Refused], tuple[CacheKey, StructuredOutputsParams, int]
    ],
    vllm_config: VllmConfig,
) -> None:
    """The probe process: ("ready",) once built, then one answer per (key, structured_outputs, steps):
    (key, ProbeResult) or (key, (error text, parameter)) for a specification vLLM refuses."""
    import torch

    torch.set_num_threads(1)  # one core at most: the engine's processes have the others
    probe = GrammarProbe(vllm_config)
    connection.send(("ready",))
    while True:
        try:
            key, structured_outputs, steps = connection.recv()
        except (EOFError, OSError):  # the worker has gone
            return
        answer: ProbeResult | Refused
        try:
            answer = probe.check(structured_outputs, steps)
        except Exception as e:  # vLLM's refusal, or the backend's compile error: the job's error
            answer = (" ".join(str(e).split()) or type(e).__name__, getattr(e, "parameter", None))
        connection.send((key, answer))
