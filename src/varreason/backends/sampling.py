"""The one sampling path of every stage: generate with any `Generator`, cut each completion by the format's cut rule,
verify its answer (`sample_verified`), in resumable chunks seeded by their index (`sampling_work`, the work of
`RunDir.sharded`). `sample`, `rollout` (and pi0's own traces), the posterior's phi-phase, the `eval` stage and the
benchmark evaluator all sample this way; only the rows they write differ (`row_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from varreason.backends.base import Generation, Generator
from varreason.runs import stable_seed
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


def sampling_work(generator: Generator, templates: Templates, prompt_of: Callable[[object], str],
                  row_of: Callable[[object, int, Verified], dict], *, n: int, settings, tag: str, seed: int,
                  target_of: Callable[[object], object] = lambda item: item,
                  prefix_of: Callable[[object], str] = lambda item: "",
                  check: Callable[[object, Cut, str], tuple[object, bool, str]] = check_problem,
                  ) -> Callable[[list, int], list[dict]]:
    """The work of `RunDir.sharded` for sampling: a chunk of items -> n completions of `prompt_of(item)` each ->
    one row per completion, `row_of(item, i, verified)` (i: the completion's index among the item's n; the row's
    columns are the artifact's). Chunk c is seeded with `stable_seed(tag, seed, c)`, the one seeding scheme of every
    stage and the evaluator, so the rows do not depend on which process did which chunk.

    settings: max_completion_length, temperature, top_p (a config's sample, rollout or eval section). target_of(item):
    what `check` verifies the answer against (the item itself by default). prefix_of(item): text given after the
    prompt that the cut rule reads as the completion's start (a trace and its close marker, when pi0 answers after it).
    """

    def work(chunk: list, index: int) -> list[dict]:
        given = [prefix_of(item) for item in chunk]
        prompts = [prompt_of(item) + prefix for item, prefix in zip(chunk, given)]
        outputs = sample_verified(generator, templates, prompts, [target_of(item) for item in chunk], n=n,
                                  max_new_tokens=settings.max_completion_length, temperature=settings.temperature,
                                  top_p=settings.top_p, seed=stable_seed(tag, seed, index), check=check,
                                  prefixes=given)
        return [row_of(item, i, v) for item, samples in zip(chunk, outputs) for i, v in enumerate(samples)]

    return work
