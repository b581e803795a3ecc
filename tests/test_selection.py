"""Which traces enter the training set and with which weight (objectives.select_traces / mean_one), by hand."""

import pytest

from varreason.objectives import mean_one, select_traces


def test_best_takes_the_flagged_trace_with_weight_1():
    assert select_traces([0.2, 0.7, 0.1], [False, True, False], "best") == ([(1, 1.0)], 0, 0.0)
    assert select_traces([0.2, 0.7, 0.1], [False, False, False], "best") == ([], 0, 0.0)


def test_weighted_keeps_every_positive_weight_and_counts_what_min_weight_drops():
    # rho~ = 0.6, 0.3, 0.1, 0: with min_weight 0.2 the 0.1 trace is dropped (counted, mass 0.1), the 0 never enters
    chosen, dropped, mass = select_traces([0.6, 0.3, 0.1, 0.0], [True, False, False, False], "weighted", 0.2)
    assert chosen == [(0, 0.6), (1, 0.3)] and dropped == 1 and mass == pytest.approx(0.1)
    assert select_traces([0.6, 0.3, 0.1, 0.0], [True] + [False] * 3, "weighted")[0] == [(0, 0.6), (1, 0.3), (2, 0.1)]
    with pytest.raises(ValueError):
        select_traces([1.0], [True], "all")


def test_mean_one_scales_by_rows_per_question():
    # 2 questions: q1 with traces 0.75 / 0.25, q2 a fallback row of 1: 3 rows, total 2 -> scale 3/2, mean 1
    assert mean_one([0.75, 0.25, 1.0], 2) == [1.125, 0.375, 1.5]
    assert sum(mean_one([0.75, 0.25, 1.0], 2)) / 3 == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_one([1.0], 0)


def test_teacher_row_is_the_one_constructor(tiny_model_dir):
    from varreason.config import FormatConfig
    from varreason.models import load_tokenizer
    from varreason.stages.common import sft_rows, teacher_row
    from varreason.tasks.base import Problem
    from varreason.templates import Templates

    t = Templates(FormatConfig(), load_tokenizer(tiny_model_dir))
    p = Problem("a", "2+2=?", "4", "2 plus 2 is 4", "sum", 1)
    row = teacher_row(t, p, "fallback", prompt="HINTED", k=-1)
    assert row == {"prompt": "HINTED", "completion": t.completion(p.trace, p.answer), "weight": 1.0,
                   "source": "fallback", "k": -1}
    assert sft_rows([p], t) == [{"prompt": t.prompt(p.question), "completion": t.completion(p.trace, p.answer),
                                 "weight": 1.0, "source": "teacher"}]


def test_star_keeps_own_traces_first_then_rationalizations():
    from varreason.objectives import star_choice

    assert star_choice([False, True], [True]) == ("own", [1])  # pi0 solved it: its own trace, no rationalization
    assert star_choice([False], [False, True, True]) == ("rationalized", [1, 2])
    assert star_choice([False], [False]) == ("none", [])
    assert star_choice([], []) == ("none", [])
