"""Importance-weight math (log ratios, estimators, ρ̃, ESS, selection, implied weights) against hand-computed values."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from varreason.objectives import (
    all_ineligible,
    effective_sample_size,
    forward_kl_weights,
    implied_weight,
    log_p_answer_accuracy,
    log_p_answer_gml,
    log_p_answer_likelihood,
    log_ratio,
    log_rho,
    normalized_weights,
    question_weights,
    select_best,
)

NEG_INF = -math.inf

# A 3-token trace worked by hand:
#   log π0 = [-1.0, -2.0, -0.5], log q = [-0.5, -1.0, -1.5]
#   differences = [-0.5, -1.0, +1.0]; exact (sum) = -0.5; geometric (mean) = -0.5 / 3 = -1/6
PRIOR = [-1.0, -2.0, -0.5]
POSTERIOR = [-0.5, -1.0, -1.5]


def test_log_ratio_geometric_and_exact_by_hand():
    assert log_ratio(PRIOR, POSTERIOR, "geometric") == pytest.approx(-1 / 6)
    assert log_ratio(PRIOR, POSTERIOR, "exact") == pytest.approx(-0.5)
    assert log_ratio(PRIOR, POSTERIOR) == pytest.approx(-1 / 6)  # geometric is the default


def test_log_ratio_uses_the_shared_length():
    # q scored two more tokens than π0 (its whole output vs the cut think part): only the first 3 count
    assert log_ratio(PRIOR, POSTERIOR + [-9.0, -9.0], "geometric") == pytest.approx(-1 / 6)
    assert log_ratio(PRIOR, POSTERIOR + [-9.0, -9.0], "exact") == pytest.approx(-0.5)
    # and the other way round
    assert log_ratio(PRIOR + [-7.0], POSTERIOR, "exact") == pytest.approx(-0.5)


def test_log_ratio_edge_cases():
    with pytest.raises(ValueError):
        log_ratio([], [-1.0])  # shared length 0: no ratio
    with pytest.raises(ValueError):
        log_ratio(PRIOR, POSTERIOR, "arithmetic")
    with pytest.raises(ValueError):
        log_ratio([-1.0, -1.0], [-1.0, NEG_INF])  # q cannot have sampled a token of probability 0
    with pytest.raises(ValueError):
        log_ratio([float("nan")], [-1.0])
    assert log_ratio([-1.0, NEG_INF], [-1.0, -1.0]) == NEG_INF  # π0 gives the trace probability 0


def test_answer_estimators_by_hand():
    answer = [math.log(0.5), math.log(0.25)]  # -0.693147, -1.386294
    assert log_p_answer_gml(answer) == pytest.approx(math.log(math.sqrt(0.5 * 0.25)))  # mean = -1.039721
    assert log_p_answer_likelihood(answer) == pytest.approx(math.log(0.125))  # sum = -2.079442
    assert log_p_answer_accuracy(2, 8) == pytest.approx(math.log(0.25))
    assert log_p_answer_accuracy(8, 8) == 0.0
    assert log_p_answer_accuracy(0, 8) == NEG_INF
    with pytest.raises(ValueError):
        log_p_answer_gml([])


@pytest.mark.parametrize("correct,total", [(1, 0), (0, -3), (9, 8), (-1, 8)])
def test_accuracy_estimator_rejects_bad_input(correct, total):
    with pytest.raises(ValueError):
        log_p_answer_accuracy(correct, total)


def test_log_rho_sum_and_infinities():
    assert log_rho(-1 / 6, math.log(0.25)) == pytest.approx(-1 / 6 - math.log(4))
    assert log_rho(-0.5, NEG_INF) == NEG_INF
    assert log_rho(NEG_INF, NEG_INF) == NEG_INF
    for bad in (math.inf, float("nan")):
        with pytest.raises(ValueError):
            log_rho(bad, -1.0)
        with pytest.raises(ValueError):
            log_rho(-1.0, bad)


def test_zero_accuracy_trace_gets_weight_zero_and_the_rest_renormalise():
    # three traces with equal π0 and q log-probs (log ratio 0); 0, 4 and 2 of 8 answers correct
    # log ρ = [-inf, log 1/2, log 1/4] -> ρ̃ = [0, (1/2)/(3/4), (1/4)/(3/4)] = [0, 2/3, 1/3]; ESS = 1/(4/9 + 1/9) = 9/5
    same = [[-1.0, -2.0]] * 3
    q = question_weights(same, same, correct=[0, 4, 2], totals=8, estimator="accuracy")
    assert [t.log_rho for t in q.traces] == pytest.approx([NEG_INF, math.log(0.5), math.log(0.25)])
    assert [t.rho_tilde for t in q.traces] == pytest.approx([0.0, 2 / 3, 1 / 3])
    assert [t.accuracy for t in q.traces] == [0.0, 0.5, 0.25]
    assert [t.eligible for t in q.traces] == [False, True, True]
    assert q.ess == pytest.approx(1.8)
    assert q.best == 1 and not q.fallback


def test_all_traces_ineligible_gives_zeros_flag_and_no_selection():
    log_rhos = [NEG_INF, NEG_INF, NEG_INF]
    assert normalized_weights(log_rhos).tolist() == [0.0, 0.0, 0.0]
    assert all_ineligible(log_rhos)
    assert not all_ineligible([NEG_INF, -3.0])
    assert select_best(log_rhos) is None
    assert effective_sample_size(normalized_weights(log_rhos)) == 0.0
    same = [[-1.0]] * 3
    q = question_weights(same, same, correct=[0, 0, 0], totals=[8, 8, 8], estimator="accuracy")
    assert q.fallback and q.best is None and q.ess == 0.0
    assert [t.rho_tilde for t in q.traces] == [0.0, 0.0, 0.0]
    assert not any(np.isnan(t.log_rho) for t in q.traces)


def test_one_trace_question():
    assert normalized_weights([-123.4]).tolist() == [1.0]
    assert effective_sample_size([1.0]) == 1.0
    q = question_weights([PRIOR], [POSTERIOR], [[-0.1]])
    assert q.traces[0].rho_tilde == 1.0 and q.ess == 1.0 and q.best == 0


def test_huge_log_rhos_do_not_overflow():
    w = normalized_weights([1000.0, 1001.0, -1000.0])
    e = math.exp(-1)  # shifted logits [-1, 0, -2001]
    assert w.tolist() == pytest.approx([e / (1 + e), 1 / (1 + e), 0.0])
    assert w[2] < 1e-300
    w = normalized_weights([1e4, 1e4 + 1])
    assert w.tolist() == pytest.approx([e / (1 + e), 1 / (1 + e)])
    assert np.isfinite(w).all()


def test_normalized_weights_against_independent_softmax():
    x = [0.3, -1.2, 2.0, 0.0, -0.7]
    direct = np.exp(x) / np.exp(x).sum()  # moderate values: no shift needed
    torch_sm = torch.softmax(torch.tensor(x, dtype=torch.float64), dim=0).numpy()
    np.testing.assert_allclose(normalized_weights(x), direct, rtol=1e-12)
    np.testing.assert_allclose(normalized_weights(x), torch_sm, rtol=1e-12)


def test_ess_by_hand():
    assert effective_sample_size([0.25] * 4) == pytest.approx(4.0)
    assert effective_sample_size([0.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([0.5, 0.25, 0.25]) == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))  # 2.6667
    assert effective_sample_size([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        effective_sample_size([-0.5, 1.5])


def test_select_best_ties_and_eligibility():
    assert select_best([1.0, 3.0, 3.0, 2.0]) == 1  # tie -> lowest index
    assert select_best([1.0, 3.0, 3.0, 2.0], [True, False, False, True]) == 3
    assert select_best([NEG_INF, -5.0]) == 1
    assert select_best([]) is None
    with pytest.raises(ValueError):
        select_best([1.0, 2.0], [True])
    with pytest.raises(ValueError):
        select_best([1.0, math.inf])


def test_question_weights_gml_and_modes_by_hand():
    # trace 0: the hand example (geometric -1/6, exact -0.5); answer [log .5, log .25]
    # trace 1: log ratio 0 (both [-1, -1]); answer [log .5]
    answers = [[math.log(0.5), math.log(0.25)], [math.log(0.5)]]
    priors, posts = [PRIOR, [-1.0, -1.0]], [POSTERIOR, [-1.0, -1.0]]
    q = question_weights(priors, posts, answers, estimator="gml")
    gml0 = math.log(math.sqrt(0.125))  # -1.039721
    expected = [-1 / 6 + gml0, math.log(0.5)]  # [-1.206388, -0.693147]
    assert [t.log_rho for t in q.traces] == pytest.approx(expected)
    assert [t.think_len for t in q.traces] == [3, 2]
    w1 = 1 / (1 + math.exp(expected[0] - expected[1]))  # 0.625534
    assert [t.rho_tilde for t in q.traces] == pytest.approx([1 - w1, w1])
    assert q.best == 1
    # exact ratio + likelihood estimator: log ρ = [-0.5 + log 1/8, log 1/2] = [-2.579442, -0.693147]
    q = question_weights(priors, posts, answers, estimator="likelihood", ratio="exact")
    assert [t.log_rho for t in q.traces] == pytest.approx([-0.5 + math.log(0.125), math.log(0.5)])
    assert q.traces[0].log_ratio == pytest.approx(-0.5)
    assert q.traces[0].log_p_answer_gml == pytest.approx(gml0)  # every computable term is reported


def test_question_weights_empty_and_filtered_traces_are_ineligible():
    priors = [PRIOR, [], PRIOR]
    posts = [POSTERIOR, [-1.0], POSTERIOR]
    q = question_weights(priors, posts, [[-0.1]] * 3, eligible=[True, True, False])
    assert [t.eligible for t in q.traces] == [True, False, False]
    assert q.traces[1].log_ratio is None and q.traces[1].think_len == 0
    assert [t.rho_tilde for t in q.traces] == [1.0, 0.0, 0.0]
    assert q.best == 0 and q.ess == 1.0
    with pytest.raises(ValueError):
        question_weights(priors, posts, estimator="gml")  # gml needs the answer log-probs
    with pytest.raises(ValueError):
        question_weights(priors, posts, estimator="accuracy")  # accuracy needs the counts


def test_implied_weights_by_hand():
    assert implied_weight(0.25, "rft") == pytest.approx(0.25)
    assert implied_weight(0.25, "grpo") == pytest.approx(math.sqrt(1 / 3))  # 0.57735
    assert implied_weight(0.25, "variational") == 1.0
    assert implied_weight(0.0, "grpo") == 0.0
    assert implied_weight(1.0, "grpo") == math.inf
    ps = np.linspace(0.0, 1.0, 21)
    for method in ("rft", "grpo"):
        values = [implied_weight(float(p), method) for p in ps]
        assert all(a < b for a, b in itertools.pairwise(values))  # easier questions weigh more
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError):
            implied_weight(bad, "rft")
    with pytest.raises(ValueError):
        implied_weight(0.5, "ppo")


def test_forward_kl_weights_by_hand():
    w, none_correct = forward_kl_weights([2, 6, 0], 8)  # acc = [1/4, 3/4, 0], sum 1
    assert w.tolist() == pytest.approx([0.25, 0.75, 0.0]) and not none_correct
    w, none_correct = forward_kl_weights([1, 1], [2, 4])  # acc = [1/2, 1/4] -> [2/3, 1/3]
    assert w.tolist() == pytest.approx([2 / 3, 1 / 3])
    w, none_correct = forward_kl_weights([0, 0, 0], 8)
    assert w.tolist() == [0.0, 0.0, 0.0] and none_correct
    with pytest.raises(ValueError):
        forward_kl_weights([9], 8)


finite_log_rhos = st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(finite_log_rhos)
def test_weights_properties(log_rhos):
    w = normalized_weights(log_rhos)
    assert w.sum() == pytest.approx(1.0)
    assert ((w >= 0) & (w <= 1)).all()
    ess = effective_sample_size(w)
    assert 1.0 - 1e-9 <= ess <= len(log_rhos) * (1 + 1e-9)
    best = select_best(log_rhos)
    # select_best is the first argmax of log ρ and carries the largest weight (argmax of ρ̃ itself can differ only
    # when two log ρ are closer than float resolution and their weights round to the same value)
    assert best == log_rhos.index(max(log_rhos))
    assert w[best] == w.max()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e3, 1e3), st.just(NEG_INF)), min_size=1, max_size=8))
def test_weights_with_neg_inf_entries(log_rhos):
    w = normalized_weights(log_rhos)
    assert not np.isnan(w).any()
    assert all(wi == 0.0 for wi, x in zip(w, log_rhos) if x == NEG_INF)
    if all_ineligible(log_rhos):
        assert w.sum() == 0.0 and select_best(log_rhos) is None
    else:
        assert w.sum() == pytest.approx(1.0) and select_best(log_rhos) is not None
