"""LaTRO (issue 26 item 2): its reward with the non-stop penalty and the KL, and the RLOO leave-one-out advantages, by
hand; the answer continuation it scores; the SFT term; and the stage end to end on the smoke preset on TRL's
RLOOTrainer: TRL's advantages are ours, the reward is the live policy's log pi(y* | x, z), and the policy-gradient
term and the KL cover the trace z only (the answer marker is cut off it)."""

import json
import os

import numpy as np
import pytest
import torch

from varreason.config import FormatConfig, load_config
from varreason.errors import InputError
from varreason.objectives import latro_rewards, rloo_advantages

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- the math, by hand ------------------------------------------------------------------------------------------------

def test_latro_rewards_by_hand():
    # r = (-1, -3, -2, -6); the third trace never reached the marker. Batch mean of r = (-1 - 3 - 2 - 6) / 4 = -3, so
    # its reward is 2 x -3 = -6: r' = (-1, -3, -6, -6).
    r, reached = [-1.0, -3.0, -2.0, -6.0], [True, True, False, True]
    assert latro_rewards(r, reached).tolist() == [-1.0, -3.0, -6.0, -6.0]
    # KL (log pi(z) - log pi0(z)) = (0.5, -1, 2, 0), beta 0.1: R = r' - 0.1 KL
    #   = (-1 - 0.05, -3 + 0.1, -6 - 0.2, -6 - 0) = (-1.05, -2.9, -6.2, -6.0)
    kl = [0.5, -1.0, 2.0, 0.0]
    assert latro_rewards(r, reached, kl, beta=0.1).tolist() == pytest.approx([-1.05, -2.9, -6.2, -6.0])
    # without the penalty the third keeps its own r = -2: R = -2 - 0.2 = -2.2
    assert latro_rewards(r, reached, kl, 0.1, non_stop_penalty=False).tolist() == pytest.approx(
        [-1.05, -2.9, -2.2, -6.0])
    # penalty_reward_value 1: the batch mean itself, -3
    assert latro_rewards(r, reached, penalty_reward_value=1.0).tolist() == [-1.0, -3.0, -3.0, -6.0]
    # every trace reached the marker: nothing changes; beta 0: the KL does not count
    assert latro_rewards(r, [True] * 4, kl, beta=0.0).tolist() == r


def test_rloo_advantages_by_hand():
    # K = 3, R = (1, 2, 6): each minus the mean of the other two
    #   A1 = 1 - (2 + 6) / 2 = -3;  A2 = 2 - (1 + 6) / 2 = -1.5;  A3 = 6 - (1 + 2) / 2 = 4.5  (sum 0)
    # second group R = (0, 0, 3): A = 0 - 1.5, 0 - 1.5, 3 - 0 = (-1.5, -1.5, 3)
    a = rloo_advantages([1.0, 2.0, 6.0, 0.0, 0.0, 3.0], 3)
    assert a.tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    # no std normalisation: scaling the rewards scales the advantages; equal rewards give 0
    assert rloo_advantages([10.0, 20.0, 60.0], 3).tolist() == pytest.approx([-30.0, -15.0, 45.0])
    assert rloo_advantages([-4.0, -4.0], 2).tolist() == [0.0, 0.0]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        latro_rewards([-1.0, -2.0], [True])
    with pytest.raises(ValueError):
        latro_rewards([-1.0], [True], kl=[0.0, 1.0], beta=0.1)
    with pytest.raises(ValueError):
        latro_rewards([float("-inf")], [True])
    with pytest.raises(ValueError):
        rloo_advantages([1.0, 2.0, 3.0], 2)  # 3 traces do not make groups of 2
    with pytest.raises(ValueError):
        rloo_advantages([1.0, 2.0], 1)  # no leave-one-out baseline with one trace


# --- what is scored and trained ------------------------------------------------------------------------------------

def test_continuation_is_the_format_after_the_trace(tiny_model_dir):
    """The reward scores what our format writes after z: think_close, answer_open, y*, answer_close, eos (each piece
    tokenised apart, as the score stage does); `answer` sums over y*'s tokens only."""
    from varreason.models import load_tokenizer
    from varreason.stages.latro import continuation
    from varreason.templates import Templates

    tok = load_tokenizer(tiny_model_dir)
    t = Templates(FormatConfig(), tok)
    whole = continuation(t, "42", "continuation")
    assert tok.decode(whole.ids, skip_special_tokens=False) == t.answer_continuation("42")
    assert (whole.start, whole.length) == (0, len(whole.ids))
    only = continuation(t, "42", "answer")
    assert only.ids == whole.ids
    # the markers are one special token each in the tiny tokenizer: y* starts after </think><answer>
    assert only.start == 2 and tok.decode(only.ids[2 : 2 + only.length]) == "42"


def test_the_marker_must_be_one_token(tiny_model_dir):
    from varreason.models import load_tokenizer
    from varreason.stages.latro import stop_token_id
    from varreason.templates import Templates

    tok = load_tokenizer(tiny_model_dir)
    assert stop_token_id(Templates(FormatConfig(), tok)) == tok.convert_tokens_to_ids("</think>")
    with pytest.raises(InputError, match="format.think_close"):
        stop_token_id(Templates(FormatConfig(think_close="so the answer is"), tok))


def test_sft_term_is_the_answer_nll_after_prompt_and_trace(tiny_model_dir):
    """answer_nll joins TRL's left-padded prompt and right-padded trace row by row, drops the marker at the end of an
    empty trace, and returns mean_k -sum log pi(answer | x, z_k) over the summed tokens, with gradient: the same
    numbers as our scorer on the unpadded sequences."""
    from varreason.backends.hf import HFScorer
    from varreason.models import load_model
    from varreason.stages.latro import answer_nll

    model = load_model(tiny_model_dir)
    stop, pad = 7, 0
    prompts, traces = [[5, 6, 9], [11, 12]], [[20, 21, 22], [stop]]  # the second: an empty z, TRL keeps the marker
    answers, summed = [[30, 31, 32], [30, 33]], [(1, 2), (0, 2)]  # (start, length) of the summed tokens
    inputs = {
        "prompt_ids": torch.tensor([[5, 6, 9], [pad, 11, 12]]), "prompt_mask": torch.tensor([[1, 1, 1], [0, 1, 1]]),
        "completion_ids": torch.tensor([[20, 21, 22], [stop, pad, pad]]),
        "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "answer_ids": torch.tensor([[30, 31, 32], [30, 33, pad]]),
        "answer_summed": torch.tensor([[0, 1, 1], [1, 1, 0]]), "answer_length": torch.tensor([3, 2]),
    }
    nll, lengths = answer_nll(model, inputs, stop)
    assert nll.requires_grad and lengths.tolist() == [3, 2]
    scored = HFScorer(model).score([prompts[0] + traces[0], prompts[1]], answers, progress=False)
    expected = -np.mean([sum(lp[s : s + n]) for lp, (s, n) in zip(scored, summed)])
    assert float(nll.detach()) == pytest.approx(expected, rel=1e-5)


# --- the config and the declaration ---------------------------------------------------------------------------------

def test_config_errors_are_one_line():
    with pytest.raises(InputError, match="latro.num_generations"):
        load_config("smoke", [("latro.num_generations", "3")])  # 8 traces per step are not groups of 3
    with pytest.raises(InputError, match="latro.name"):
        load_config("smoke", [("latro.name", "initial")])
    with pytest.raises(InputError, match="latro.reward_tokens"):
        load_config("smoke", [("latro.reward_tokens", "all")])
    cfg = load_config("demo")
    assert (cfg.latro.beta, cfg.latro.sft_coef, cfg.latro.penalty_reward_value) == (0.05, 0.0, 2.0)  # LaTRO's


def test_declared_as_on_policy_with_its_own_reward():
    from varreason.stages.graph import BASELINES, STAGES
    from varreason.stages.methods import METHODS, PI0_ONLINE

    m = METHODS["latro"]
    assert m.stages == ("latro",) and m.proposal is PI0_ONLINE and m.bias is None
    assert m.model(load_config("smoke")) == "latro" and "latro" in BASELINES
    assert STAGES["latro"].outputs(load_config("smoke")) == ["models/latro/config.json", "latro/latro/rewards.parquet"]


# --- end to end on the smoke preset ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from varreason.cli import main

    out = tmp_path_factory.mktemp("latro") / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--until", "initial"]) == 0
    assert main(["latro", "--config", "smoke", "--output-dir", str(out), "--latro.sft_coef", "0.5"]) == 0
    import pandas as pd

    return out, pd.read_parquet(out / "latro" / "latro" / "rewards.parquet")


@pytest.mark.slow
def test_stage_writes_its_model_rewards_and_compute(trained):
    out, log = trained
    cfg = load_config("smoke")
    lt = cfg.latro
    assert (out / "models" / "latro" / "config.json").exists()
    assert len(log) == lt.max_steps * lt.per_device_train_batch_size
    assert log.groupby(["batch", "question_id"]).size().eq(lt.num_generations).all()  # whole RLOO groups
    counts = json.loads((out / "manifest.json").read_text())["stages"]["latro"]["counts"]
    assert counts["optimizer_steps"] == lt.max_steps and counts["traces"] == len(log) and counts["sft_coef"] == 0.5
    c = counts["compute"]
    # every generated token: the trace, and the marker where it was reached
    assert c["generated"] == int(log["trace_tokens"].sum() + log["reached"].sum())
    # the reward reads prompt + z + answer and pi0 prompt + trace: more than is trained (prompt + z + answer, once)
    assert c["scored"] > c["trained"] > c["generated"] > 0 and c["prefilled"] > 0


@pytest.mark.slow
def test_trl_advantages_are_latro_rewards_with_rloo(trained):
    """TRL's RLOOTrainer computed, per rollout batch, exactly objectives.latro_rewards (non-stop penalty over the batch
    mean, KL to pi0) followed by objectives.rloo_advantages."""
    _, log = trained
    beta = load_config("smoke").latro.beta
    for _, batch in log.groupby("batch"):
        want = rloo_advantages(latro_rewards(batch["answer_logp"], batch["reached"], batch["kl"], beta),
                               load_config("smoke").latro.num_generations)
        assert np.allclose(batch["advantage"], want, atol=1e-4, rtol=1e-5)
        assert np.allclose(batch["total_reward"], batch["reward"] - beta * batch["kl"])


@pytest.mark.slow
def test_reward_is_the_policys_answer_likelihood_after_z_and_the_gradient_covers_z_only(trained):
    """In the first batch the policy is still pi0: the reward must be log pi0(answer | x, z) and TRL's log pi(z | x)
    (the policy-gradient term's and the KL's) must be over z alone, the marker that ended it cut off; the KL is 0."""
    from varreason.backends.hf import HFScorer
    from varreason.models import load_model, load_tokenizer
    from varreason.runs import RunDir
    from varreason.stages.common import sampled_questions
    from varreason.stages.latro import continuation
    from varreason.templates import Templates

    out, log = trained
    cfg = load_config("smoke")
    tok = load_tokenizer(out / "models" / "initial")
    t = Templates(cfg.format, tok)
    stop = tok.convert_tokens_to_ids(cfg.format.think_close)
    problems = {p.id: p for p in sampled_questions(cfg, RunDir(out))}
    first = log[log["batch"] == 0]
    assert first["reached"].any(), "no trace of the first batch reached the marker: the cut is not exercised"
    prompts = [tok(text=t.prompt(problems[q].question))["input_ids"] for q in first["question_id"]]  # as TRL does
    traces = [list(z) for z in first["trace_token_ids"]]
    assert all(stop not in z for z in traces)
    assert (first["trace_tokens"] < cfg.latro.max_completion_length).equals(first["reached"])
    scorer = HFScorer(load_model(out / "models" / "initial"))
    conts = [continuation(t, problems[q].answer, cfg.latro.reward_tokens).ids for q in first["question_id"]]
    answer = [sum(lp) for lp in scorer.score([p + z for p, z in zip(prompts, traces)], conts, progress=False)]
    assert np.allclose(first["answer_logp"], answer, atol=1e-3)
    trace = [sum(lp) for lp in scorer.score(prompts, traces, progress=False)]
    assert np.allclose(first["trace_logp"], trace, atol=1e-3)
    assert np.allclose(first["kl"], 0.0, atol=1e-3)


@pytest.mark.slow
def test_the_policy_moved_and_still_stops_where_pi0_does(trained):
    from transformers import GenerationConfig

    out, _ = trained
    initial = GenerationConfig.from_pretrained(out / "models" / "initial")
    latro = GenerationConfig.from_pretrained(out / "models" / "latro")
    assert latro.eos_token_id == initial.eos_token_id  # the marker was a stop token for training only
    from safetensors.torch import load_file

    before = load_file(out / "models" / "initial" / "model.safetensors")
    after = load_file(out / "models" / "latro" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
