"""What every backend (Hugging Face `hf`, vLLM `vllm`) provides: sampling completions and scoring tokens.

The protocols are backend-neutral on purpose: prompts go in as *strings* (the backend tokenizes them without
adding special tokens, so a prompt rendered by `templates` is used exactly as written), and scoring works on
*token id lists* (what a `Generation` returns), so samples and scores never go through a lossy re-tokenisation.

Conventions shared by all backends:
- `Generation.token_ids` are the generated tokens up to and including the token that completes the first stop
  string; the eos token and any padding are excluded. Score them as they are: `scorer.score([prompt_ids],
  [gen.token_ids])`.
- `Generation.text` is the decoded `token_ids` (special tokens kept), cut right after the first stop string, which
  stays in the text. It equals `decode(token_ids)` except in the rare case where the last token runs past the end
  of the stop string (the overhang is dropped from the text, the token is kept).
- `stop_reason` is `"stop"` (a stop string was generated), `"eos"` (the eos token was generated) or `"length"`
  (`max_new_tokens` reached); `finished` is `stop_reason != "length"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

StopReason = Literal["stop", "eos", "length"]


@dataclass
class Generation:
    """One sampled completion of one prompt."""

    text: str
    token_ids: list[int]
    finished: bool
    stop_reason: str  # "stop" | "eos" | "length"


@runtime_checkable
class Generator(Protocol):
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int = 0,
        progress: bool = True,
        desc: str = "sampling",
    ) -> list[list[Generation]]:
        """Sample `n` completions per prompt; outer list = prompts (input order), inner = their `n` samples.

        `temperature == 0` is greedy decoding. Same arguments and seed give the same outputs."""
        ...


@runtime_checkable
class Scorer(Protocol):
    def score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], progress: bool = True
    ) -> list[list[float]]:
        """Per-token log p(completion_t | prompt, completion_<t) under the model (temperature 1, no truncation);
        one list per (prompt, completion) pair, of length `len(completion)`."""
        ...


def exact_decoder(tokenizer) -> Callable[[list[int]], str]:
    """decode() as every convention here uses it: special tokens kept, no clean-up of spaces."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def shortest_prefix(decode: Callable[[list[int]], str], tokens: list[int], text: str) -> int:
    """The fewest leading tokens whose decoding starts with `text` (binary search; decode(tokens) must)."""
    lo, hi = 0, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if decode(tokens[:mid]).startswith(text):
            hi = mid
        else:
            lo = mid + 1
    return hi


def prompt_token_ids(who: str, tokenizer, prompts: list[str], n: int, max_new_tokens: int, temperature: float,
                     top_p: float, stop: list[str] | None) -> tuple[list[list[int]], list[str] | None]:
    """The checks every `Generator.generate` makes, then the prompts' token ids (no special tokens added) and the
    non-empty stop strings."""
    if isinstance(prompts, str):
        raise TypeError(f"{who}: prompts must be a list of strings, not one string")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"{who}: n and max_new_tokens must be >= 1, got {n} and {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"{who}: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    stop = [s for s in (stop or []) if s] or None
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    for i, prompt in enumerate(ids):
        if not prompt:
            raise ValueError(f"{who}: prompt {i} is empty; generation needs at least one token")
    return ids, stop


def apply_stop_strings(decode: Callable[[list[int]], str], tokens: list[int], reason: str,
                       stop: list[str] | None) -> Generation:
    """The `Generation` of generated `tokens` (eos and padding already removed, `reason` "eos" or "length") under the
    conventions above: text and tokens cut right after the first stop string. Every backend ends here, so every
    engine returns the same ids and text for the same tokens."""
    text = decode(tokens)
    ends = [text.find(s) + len(s) for s in (stop or []) if s in text]
    if ends:
        text = text[: min(ends)]
        tokens, reason = tokens[: shortest_prefix(decode, tokens, text)], "stop"
    return Generation(text=text, token_ids=list(tokens), finished=reason != "length", stop_reason=reason)
