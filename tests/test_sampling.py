"""The one sampling path (`backends.sampling.sample_verified`): generation -> cut -> verdict, with a scripted
generator so every expected value is written out by hand."""

from varreason.backends.base import Generation
from varreason.backends.sampling import check_problem, sample_verified
from varreason.config import FormatConfig
from varreason.tasks.base import Problem
from varreason.templates import Templates


class Scripted:
    """Returns the given texts in order, n per prompt; records the arguments it was called with."""

    def __init__(self, texts):
        self.texts, self.kwargs = list(texts), None

    def generate(self, prompts, **kwargs):
        self.kwargs = kwargs
        n = kwargs["n"]
        return [[Generation(self.texts.pop(0), [7], True, "stop") for _ in range(n)] for _ in prompts]


def problem(total: int) -> Problem:
    return Problem(id="q", question="5+7", answer=str(total), trace="", task="user", difficulty=1,
                   meta={"answer_kind": "integer"})


def test_cut_and_verdict_per_completion_and_stop_strings_passed():
    t = Templates(FormatConfig())
    p = problem(12)
    gen = Scripted(["5+7=12</think><answer>12</answer>", "5+7=13</think><answer>13</answer>", "no markers at all"])
    out = sample_verified(gen, t, ["q1", "q2", "q3"], [p, p, p], n=1, max_new_tokens=9, temperature=0.5, top_p=0.9,
                          seed=3)
    assert gen.kwargs == {"n": 1, "max_new_tokens": 9, "temperature": 0.5, "top_p": 0.9, "stop": ["</answer>"],
                          "seed": 3, "progress": False}
    (right,), (wrong,), (none,) = out
    assert (right.cut.trace, right.predicted, right.correct) == ("5+7=12", "12", True)
    assert (wrong.predicted, wrong.correct) == ("13", False)
    assert (none.predicted, none.correct, none.reason, none.cut.format_ok) == (None, False, "no answer", False)


def test_prefix_is_cut_with_the_completion_and_a_custom_check_is_used():
    t = Templates(FormatConfig())
    gen = Scripted(["<answer>4</answer>", "<answer>5</answer>"])
    seen = []

    def check(target, cut, text):
        seen.append((target, cut.trace, cut.answer, text))
        return cut.answer, cut.answer == target, "compared"

    out = sample_verified(gen, t, ["p"], ["4"], n=2, max_new_tokens=4, temperature=1.0, top_p=1.0, seed=0,
                          check=check, prefixes=["2+2=4</think>"])
    assert [v.correct for v in out[0]] == [True, False]
    assert seen == [("4", "2+2=4", "4", "<answer>4</answer>"), ("4", "2+2=4", "5", "<answer>5</answer>")]
    assert check_problem(problem(4), out[0][0].cut, "")[1] is True
