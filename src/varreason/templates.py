"""Text formats: the reasoning format, the cut rule, and the posterior formats A and B with the answer hint.

A reasoning example is
    prompt(x) = <chat template: system?, user x, assistant turn opened> + think_open
    completion = z + think_close + answer_open + y + answer_close (+ eos when training)
so the thinking opener belongs to the prompt (not trained on) and the completion starts with the trace, as in
the released recipe. The posterior prompts end with the same `think_open`, so a trace sampled from q is the
same string, and the same token ids, under the reasoning prompt and under q's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from varreason.config import FormatConfig

# Our own wording of the two posterior formats of the paper (App. E); keep them short for tiny models.
POSTERIOR_SYSTEM = {
    "A": "Give the correct solution first, then the explanation that reaches it.",
    "B": "You are given the correct answer. Reconstruct the reasoning that leads to it.",
}
HINT_LABEL = "Correct answer:"


@dataclass(frozen=True)
class Cut:
    """A generated completion split by the cut rule."""

    trace: str
    answer: str | None  # None when no answer could be found
    format_ok: bool
    error: str = ""  # "" | "missing think_close" | "missing answer_open" | "missing answer_close" | "empty trace"


class Templates:
    """Renders prompts and completions for one tokenizer and one set of markers."""

    def __init__(self, fmt: FormatConfig, tokenizer=None):
        self.fmt = fmt
        self.tokenizer = tokenizer

    # --- rendering -------------------------------------------------------------------------------------------
    def _chat(self, system: str, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        tok = self.tokenizer
        if self.fmt.use_chat_template and tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['content']}\n" for m in messages)

    def prompt(self, question: str) -> str:
        """The reasoning model's prompt P(x): no hint, ends with the think opener."""
        return self._chat(self.fmt.system_prompt, question) + self.fmt.think_open

    def completion(self, trace: str, answer: str, eos: bool = True) -> str:
        """z, think_close, answer section; with the tokenizer's eos so the model learns to stop."""
        f = self.fmt
        text = f"{trace}{f.think_close}{f.answer_open}{answer}{f.answer_close}"
        if eos and self.tokenizer is not None and self.tokenizer.eos_token:
            text += self.tokenizer.eos_token
        return text

    def answer_continuation(self, answer: str, eos: bool = True) -> str:
        """What follows a trace: the part of the completion scored as log pi(y | x, z)."""
        return self.completion("", answer, eos=eos)

    def posterior_prompt(self, question: str, hint: str, posterior_format: str | None = None) -> str:
        """q(z | x, y'): the hint y' in the prompt, in format A (solution first) or B (reconstruct)."""
        f = self.fmt
        kind = posterior_format or f.posterior_format
        if kind == "A":
            head = self._chat(POSTERIOR_SYSTEM["A"], question)
            return f"{head}{f.answer_open}{hint}{f.answer_close}{f.think_open}"
        if kind == "B":
            return self._chat(POSTERIOR_SYSTEM["B"], f"{question}\n{HINT_LABEL} {hint}") + f.think_open
        raise ValueError(f"unknown posterior format {kind!r} (expected 'A' or 'B')")

    def trace_token_ids(self, token_ids: list[int], trace: str) -> list[int]:
        """The sampled tokens that make up `trace` (the cut text): scored as they were sampled, never re-tokenised.

        When think_close is one token (a special token, as in Qwen3 and our tiny tokenizer) the trace is everything
        before it; otherwise it is the shortest prefix whose decoding covers the trace (a token that straddles the
        marker is kept, as the released scripts keep `<|end_of`).
        """
        if not trace:
            return []
        tok = self.tokenizer
        close = tok(self.fmt.think_close, add_special_tokens=False)["input_ids"]
        if len(close) == 1 and close[0] in token_ids:
            return list(token_ids[: token_ids.index(close[0])])

        from varreason.backends.base import exact_decoder, shortest_prefix

        return list(token_ids[: shortest_prefix(exact_decoder(tok), list(token_ids), trace)])

    def stop_strings(self) -> list[str]:
        return [self.fmt.answer_close]

    # --- the cut rule --------------------------------------------------------------------------------------
    def cut(self, text: str) -> Cut:
        """Split generated text (what follows think_open) into trace and answer.

        The trace is everything before the first think_close. Tolerant of what small models get wrong: a missing
        think_close (then the trace ends at the answer opener if there is one, else it is the whole text), a
        missing answer opener (the answer is whatever follows think_close) or a missing answer closer (the answer
        runs to the end). Each of these is reported as a format error; none raises.
        """
        f = self.fmt
        if self.tokenizer is not None and self.tokenizer.eos_token:
            text = text.split(self.tokenizer.eos_token, 1)[0]
        close = text.find(f.think_close)
        if close < 0:
            opener = text.find(f.answer_open)
            if opener < 0:
                return Cut(text, None, False, "missing think_close")
            rest = text[opener + len(f.answer_open):]
            end = rest.find(f.answer_close)
            return Cut(text[:opener], (rest if end < 0 else rest[:end]).strip(), False, "missing think_close")
        trace, rest = text[:close], text[close + len(f.think_close):]
        opener = rest.find(f.answer_open)
        if opener < 0:
            answer = rest.split(f.answer_close, 1)[0].strip()
            return Cut(trace, answer or None, False, "missing answer_open")
        rest = rest[opener + len(f.answer_open):]
        end = rest.find(f.answer_close)
        if end < 0:
            return Cut(trace, rest.strip(), False, "missing answer_close")
        if not trace.strip():
            return Cut(trace, rest[:end].strip(), False, "empty trace")
        return Cut(trace, rest[:end].strip(), True)
