"""Baselines: the GRPO reward function (never rewards what it could not check), the debiased reward, GRPO advantages
and their per-question weight against the paper's formulas, RFT's rows, and the bias measurement."""

import math

import numpy as np
import pytest

from varreason.config import FormatConfig, RunConfig, load_config
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.objectives import (
    debiased_rewards,
    fit_implied_scale,
    group_advantages,
    group_forward_kl_weight,
    implied_weight,
    rft_weights,
)
from varreason.report import bias
from varreason.stages.baselines import VerifierReward, rft_rows
from varreason.stages.methods import METHODS
from varreason.tasks.base import Problem
from varreason.templates import Templates


@pytest.fixture()
def reward_parts(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    t = Templates(FormatConfig(), tok)
    problems = {
        "a": Problem("a", "2+3=?", "5", "2+3=5", "user", 1, meta={"answer_kind": "math"}),
        "b": Problem("b", "1+1=?", "2", "1+1=2", "user", 1, meta={"answer_kind": "math"}),
        "bad": Problem("bad", "what?", "\\frac{", "?", "user", 1, meta={"answer_kind": "math"}),
    }
    return tok, t, problems


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_reward_is_one_only_for_a_verified_answer(reward_parts):
    tok, t, problems = reward_parts
    right, wrong = t.completion("2+3=5", "5"), t.completion("2+3=6", "6")
    no_answer = "2+3=5 and that is all"
    reward = VerifierReward(problems, t, tok)
    out = reward(completion_ids=[ids(tok, x) for x in (right, wrong, no_answer)], question_id=["a", "a", "a"])
    assert out == [1.0, 0.0, 0.0]
    assert [r["correct"] for r in reward.log] == [True, False, False]


def test_reward_reads_the_markers_that_trl_text_drops(reward_parts):
    """TRL decodes completions with skip_special_tokens=True; the markers are special tokens here, so the reward
    must decode the ids itself: the same completion read from TRL's text would have no answer section."""
    tok, t, problems = reward_parts
    right = t.completion("2+3=5", "5")
    trl_text = tok.decode(ids(tok, right), skip_special_tokens=True)
    assert t.cut(trl_text).answer is None
    assert VerifierReward(problems, t, tok)(completion_ids=[ids(tok, right)], question_id=["a"]) == [1.0]


def test_an_unparseable_gold_never_rewards(reward_parts):
    tok, t, problems = reward_parts
    same_as_gold = t.completion("no idea", "\\frac{")
    anything = t.completion("no idea", "7")
    out = VerifierReward(problems, t, tok)(completion_ids=[ids(tok, same_as_gold), ids(tok, anything)],
                                           question_id=["bad", "bad"])
    assert out == [0.0, 0.0]


def test_a_raising_scorer_is_a_zero(reward_parts):
    tok, t, problems = reward_parts

    def boom(problem, answer):
        raise RuntimeError("verifier crashed")

    out = VerifierReward(problems, t, tok, scorer=boom)(completion_ids=[ids(tok, t.completion("2+3=5", "5"))],
                                                        question_id=["a"])
    assert out == [0.0]


def test_debiased_reward_divides_by_the_batch_accuracy_of_the_question(reward_parts):
    tok, t, problems = reward_parts
    right_a, wrong_a = t.completion("2+3=5", "5"), t.completion("x", "4")
    right_b = t.completion("1+1=2", "2")
    comps = [right_a, wrong_a, wrong_a, wrong_a, right_b, right_b, right_b, right_b]
    qids = ["a"] * 4 + ["b"] * 4
    out = VerifierReward(problems, t, tok, mode="debiased")(completion_ids=[ids(tok, c) for c in comps],
                                                            question_id=qids)
    assert out == pytest.approx([4.0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0])  # P̂(a) = 1/4, P̂(b) = 1


def test_debiased_rewards_by_hand():
    assert debiased_rewards([1, 0, 1, 0, 0, 0], ["x", "x", "x", "y", "y", "y"]).tolist() == pytest.approx(
        [1.5, 0, 1.5, 0, 0, 0])  # P̂(x) = 2/3; y has no correct completion: 0, never 0/0
    with pytest.raises(ValueError):
        debiased_rewards([1, 0], ["x"])


def test_group_advantages_by_hand():
    # group [1, 0, 0, 0]: mean 1/4, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = group_advantages([1, 0, 0, 0], 4, "group")
    assert adv.tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert group_advantages([1, 0, 0, 0], 4, "none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1, 1, 1, 1], 4, "group").tolist() == [0, 0, 0, 0]  # zero std: no signal
    with pytest.raises(ValueError):
        group_advantages([1, 0, 0], 2)


def test_debiasing_is_undone_by_group_std_scaling():
    """Why `grpo.reward: debiased` refuses `scale_rewards: group`: r/P̂ then (r − mean)/std is plain GRPO."""
    rng = np.random.default_rng(0)
    correct = rng.random(32) < 0.4
    groups = np.repeat(np.arange(4), 8)
    plain = group_advantages(correct.astype(float), 8, "group", eps=0.0)
    debiased = group_advantages(debiased_rewards(correct, groups), 8, "group", eps=0.0)
    assert np.allclose(np.nan_to_num(plain), np.nan_to_num(debiased))
    cfg = RunConfig()
    cfg.grpo.reward, cfg.grpo.scale_rewards = "debiased", "group"
    from varreason.config import validate

    with pytest.raises(InputError, match="undone"):
        validate(cfg)


@pytest.mark.parametrize("c", [1, 2, 3, 5, 7])
def test_group_weight_follows_the_paper(c):
    """One group of G = 8 with c correct: binary+none gives P, binary+group std √(P/(1−P))·√((G−1)/G) (the unbiased
    std), debiased+none gives 1 (§4, Eq. 11-12)."""
    g, p = 8, c / 8
    correct = [True] * c + [False] * (g - c)
    binary = [float(x) for x in correct]
    assert group_forward_kl_weight(binary, correct, "none") == pytest.approx(p)
    assert group_forward_kl_weight(binary, correct, "group") == pytest.approx(
        implied_weight(p, "grpo") * math.sqrt((g - 1) / g))
    assert group_forward_kl_weight(list(debiased_rewards(correct, [0] * g)), correct, "none") == pytest.approx(1.0)
    assert group_forward_kl_weight([1.0] * g, [True] * g, "group") == 0.0  # P = 1: zero advantages, no gradient


def test_fit_implied_scale_by_hand():
    c, rel = fit_implied_scale([0.25, 0.5], [0.5, 1.0], "rft")  # w = 2 P exactly
    assert (c, rel) == (pytest.approx(2.0), pytest.approx(0.0))
    c, rel = fit_implied_scale([0.25, 0.5], [1.0, 1.0], "rft")  # c = (0.25 + 0.5) / (0.0625 + 0.25) = 2.4
    assert c == pytest.approx(2.4)
    assert rel == pytest.approx(math.sqrt(((1 - 0.6) ** 2 + (1 - 1.2) ** 2) / 2))
    c, rel = fit_implied_scale([0.5, 1.0], [1.0, 0.0], "grpo")  # P = 1 (formula +inf) is left out of the fit
    assert (c, rel) == (pytest.approx(1.0), pytest.approx(0.0))


def test_rft_weights():
    assert rft_weights(3, "keep") == [1.0, 1.0, 1.0]
    assert rft_weights(4, "normalized") == [0.25] * 4
    assert rft_weights(0, "normalized") == []
    with pytest.raises(ValueError):
        rft_weights(2, "best")


def _sample(qid, k, correct, finished=True):
    return {"question_id": qid, "k": k, "trace": f"t{k}", "posterior_answer": "5" if correct else "6",
            "correct": correct, "finished": finished}


def test_rft_rows_keep_normalized_and_mix():
    cfg = RunConfig()
    t = Templates(cfg.format)
    problems = {"a": Problem("a", "2+3=?", "5", "2+3=5", "sum", 1), "b": Problem("b", "9+9=?", "18", "...", "sum", 3)}
    samples = [_sample("a", 0, True), _sample("a", 1, True), _sample("a", 2, True, finished=False),
               _sample("a", 3, False), _sample("b", 0, False), _sample("b", 1, False)]
    rows, counts = rft_rows(cfg, samples, problems, t)
    kept = [r for r in rows if r["source"] == "rft"]
    assert [(r["question_id"], r["k"], r["weight"]) for r in kept] == [("a", 0, 1.0), ("a", 1, 1.0)]
    assert kept[0]["completion"] == t.completion("t0", "5")
    assert sum(r["source"] == "teacher" for r in rows) == 2
    assert counts["solved_questions"] == 1 and counts["kept_traces"] == 2
    cfg.rft.mode, cfg.rft.mix = "normalized", False
    rows, _ = rft_rows(cfg, samples, problems, t)
    assert [r["weight"] for r in rows] == [0.5, 0.5]


def test_bias_measure_of_a_grpo_log_follows_the_formula(tmp_path):
    """A synthetic reward log: groups at P = c/8; the measured weights fit √(P/(1−P)) with zero error, and the
    debiased rewards fit ∝ 1 on 0 < P < 1 (P = 0 has no correct completion: weight 0)."""
    from varreason.runs import RunDir

    log, dlog = [], []
    for b, c in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 5]):
        correct = [True] * c + [False] * (8 - c)
        rewards = debiased_rewards(correct, ["q"] * 8)
        for j in range(8):
            log.append({"batch": b, "step": b, "question_id": f"q{b}", "correct": correct[j],
                        "reward": float(correct[j])})
            dlog.append({**log[-1], "reward": float(rewards[j])})
    cfg = RunConfig()
    run = RunDir(tmp_path)
    run.write_rows("grpo/grpo/rewards.parquet", log)
    curve = bias.measure(METHODS["grpo"].bias, cfg, run, {})
    assert curve["formula"] == "grpo" and curve["relative_rmse"] == pytest.approx(0.0, abs=1e-9)
    at = {b["p"]: b["mean_weight"] for b in curve["bins"]}
    assert at[0.0] == 0.0 and at[1.0] == 0.0 and at[0.5] == pytest.approx(math.sqrt(7 / 8))
    # against pi0's P: q0 and q9 both have pi0 P = 0.25; their mean group weight is binned there
    curve = bias.measure(METHODS["grpo"].bias, cfg, run, {"q0": 0.25, "q9": 0.25, "q4": 0.5})
    assert curve["x"] == "pi0" and curve["points"] == 3 and curve["groups"] == 11
    at = {b["p"]: b["mean_weight"] for b in curve["bins"]}
    assert at[0.25] == pytest.approx((0.0 + 0.25 / math.sqrt(0.25 * 0.75 * 8 / 7)) / 2)
    assert at[0.5] == pytest.approx(math.sqrt(7 / 8))
    assert curve["group_relative_rmse"] == pytest.approx(0.0, abs=1e-9)
    cfg.grpo.reward, cfg.grpo.scale_rewards = "debiased", "none"
    run.write_rows("grpo/grpo/rewards.parquet", dlog)
    curve = bias.measure(METHODS["grpo"].bias, cfg, run, {})
    assert curve["formula"] == "variational" and curve["relative_rmse"] == pytest.approx(0.0, abs=1e-9)
    assert curve["scale"] == pytest.approx(1.0)


def test_bias_of_sft_methods_sums_row_weights_per_question():
    rows = [{"question_id": "a", "source": "rft", "weight": 1.0}, {"question_id": "a", "source": "rft", "weight": 1.0},
            {"question_id": "a", "source": "teacher", "weight": 1.0}, {"question_id": "c", "source": "rft", "weight": 1}]
    assert bias.sft_question_weights(rows, ("rft",), ["a", "b"]) == {"a": 2.0, "b": 0.0}
    assert bias.pi0_accuracy([{"question_id": "a", "correct": True}, {"question_id": "a", "correct": False}]) == {
        "a": 0.5}


def test_compare_config_errors_are_one_line(tmp_path):
    from varreason.compare import resolve_methods

    cfg = load_config("smoke", [("compare.methods", "[sft, grop]")])
    with pytest.raises(InputError, match="did you mean 'grpo'"):
        resolve_methods(cfg)
    cfg = load_config("smoke", [("compare.methods", "[]"), ("compare.variants", "{x: {method: nope}}")])
    with pytest.raises(InputError, match="'method' must be one of"):
        resolve_methods(cfg)
    cfg = load_config("smoke", [("compare.methods", "[sft]"),
                                ("compare.variants", "{rft-norm: {method: rft, rft.mode: normalized}}")])
    methods = resolve_methods(cfg)
    assert list(methods) == ["sft", "rft-norm"]
    assert methods["rft-norm"].overrides()["rft.name"] == "rft-norm"
    with pytest.raises(InputError, match="name"):
        load_config("smoke", [("grpo.name", "initial")])


def test_a_flops_matched_variant_names_the_method_whose_flops_it_matches():
    """SFT matched to the rounds' FLOPs (docs/study.md): a variant of sft-matched-flops with `flops_of`."""
    from varreason.compare import resolve_methods

    variants = "{rounds2: {method: variational, rounds: 2}, sft-flops-r2: {method: sft-matched-flops, flops_of: rounds2}}"
    methods = resolve_methods(load_config("smoke", [("compare.methods", "[sft, variational]"),
                                                    ("compare.variants", variants)]))
    assert methods["sft-flops-r2"].flops_of == "rounds2" and METHODS["sft-matched-flops"].flops_of == "variational"
    assert "flops_of" not in methods["sft-flops-r2"].overrides()  # not a config field
    assert methods["sft-flops-r2"].overrides()["final.sft_paper"] is False
    for spec, message in (("{x: {method: rft, flops_of: variational}}", "rft does not match another method's FLOPs"),
                          ("{x: {method: sft-matched-flops, flops_of: rounds9}}", "rounds9, which is not among"),
                          ("{x: {method: sft-matched-flops, flops_of: y}, y: {method: variational, rounds: 2}}",
                           "put y before it"),
                          ("{x: {method: sft-matched-flops, flops_of: x}}", "the variant itself"),
                          ("{x: {method: sft-matched-flops, flops_of: null}}", "must name a method"),
                          ("{x: {method: sft-matched-flops, flops_of: [a]}}", "must name a method")):
        with pytest.raises(InputError, match=message):
            resolve_methods(load_config("smoke", [("compare.methods", "[sft, variational]"), ("compare.variants", spec)]))
