"""The one sampling path of every stage: generate with any `Generator`, cut each completion by the format's cut rule,
verify its answer. `sample`, `rollout` (and pi0's own traces), the `eval` stage and the benchmark evaluator all call
`sample_verified`; only the rows they write differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from varreason.backends.base import Generation, Generator
from varreason.templates import Cut, Templates


@dataclass
class Verified:
    """One sampled completion: the generation, its cut (trace / answer / format), and the verdict on its answer."""

    generation: Generation
    cut: Cut
    predicted: object  # the answer as the checker read it (None: no answer)
    correct: bool
    reason: str


def check_problem(problem, cut: Cut, text: str) -> tuple[object, bool, str]:
    """(predicted, correct, reason) of a cut completion against a training / held-out `Problem`."""
    from varreason.tasks import score_problem

    if cut.answer is None:
        return None, False, "no answer"
    verdict = score_problem(problem, cut.answer)
    return cut.answer, bool(verdict.correct), verdict.reason


def sample_verified(generator: Generator, templates: Templates, prompts: list[str], targets: list, *, n: int,
                    max_new_tokens: int, temperature: float, top_p: float, seed: int,
                    check: Callable[[object, Cut, str], tuple[object, bool, str]] = check_problem,
                    prefixes: list[str] | None = None) -> list[list[Verified]]:
    """n completions per prompt, stopped at the format's answer close, each cut and checked against its target.

    prefixes[i]: text that belongs to prompt i's completion for the cut rule but was already in the prompt (a trace
    and its close marker, when pi0 answers after a given trace).
    """
    outputs = generator.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 stop=templates.stop_strings(), seed=seed, progress=False)
    result = []
    for i, (target, samples) in enumerate(zip(targets, outputs)):
        row = []
        for g in samples:
            cut = templates.cut((prefixes[i] if prefixes else "") + g.text)
            predicted, correct, reason = check(target, cut, g.text)
            row.append(Verified(g, cut, predicted, correct, reason))
        result.append(row)
    return result
