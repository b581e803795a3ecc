"""Self-distillation from the hinted posterior q (issue 26 item 3): the per-token divergence by hand on a two-token
vocabulary, its reduction, TRL's convention, the teacher's input (q's hinted prompt + the student's exact completion
ids), and the stage end to end on the smoke preset."""

import hashlib
import json
import math

import pytest
import torch

from varreason.config import load_config
from varreason.errors import InputError
from varreason.objectives import distill_divergence, self_distill_loss

# Two-token vocabulary. Student pi = (0.5, 0.5) (logits 0, 0); teacher q = (0.8, 0.2) (logits ln 0.8, ln 0.2).
PI = torch.tensor([0.0, 0.0])
Q = torch.log(torch.tensor([0.8, 0.2]))
# forward KL(q || pi) = 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5) = 0.8 (0.470004) + 0.2 (-0.916291) = 0.376003 - 0.183258
FORWARD = 0.192745
# reverse KL(pi || q) = 0.5 ln(0.5 / 0.8) + 0.5 ln(0.5 / 0.2) = 0.5 (-0.470004) + 0.5 (0.916291)
REVERSE = 0.223144
# JSD, alpha 0.5: m = 0.5 pi + 0.5 q = (0.65, 0.35)
#   KL(q || m)  = 0.8 ln(0.8 / 0.65) + 0.2 ln(0.2 / 0.35) = 0.8 (0.207639) + 0.2 (-0.559616) = 0.054188
#   KL(pi || m) = 0.5 ln(0.5 / 0.65) + 0.5 ln(0.5 / 0.35) = 0.5 (-0.262364) + 0.5 (0.356675) = 0.047156
#   D = 0.5 (0.054188) + 0.5 (0.047156) = 0.050672
JSD_HALF = 0.050672
# JSD, alpha 0.25: m = 0.75 pi + 0.25 q = (0.575, 0.425)
#   KL(q || m)  = 0.8 ln(0.8 / 0.575) + 0.2 ln(0.2 / 0.425) = 0.8 (0.330242) + 0.2 (-0.753772) = 0.113439
#   KL(pi || m) = 0.5 ln(0.5 / 0.575) + 0.5 ln(0.5 / 0.425) = 0.5 (-0.139762) + 0.5 (0.162519) = 0.011379
#   D = 0.25 (0.113439) + 0.75 (0.011379) = 0.036894
JSD_QUARTER = 0.036894


def test_divergence_by_hand_on_two_tokens():
    assert float(distill_divergence(PI, Q, alpha=0.0)) == pytest.approx(FORWARD, abs=1e-5)
    assert float(distill_divergence(PI, Q, alpha=1.0)) == pytest.approx(REVERSE, abs=1e-5)
    assert float(distill_divergence(PI, Q, alpha=0.5)) == pytest.approx(JSD_HALF, abs=1e-5)
    assert float(distill_divergence(PI, Q, alpha=0.25)) == pytest.approx(JSD_QUARTER, abs=1e-5)


def test_alpha_0_and_1_are_the_forward_and_reverse_kl():
    """alpha 0 is KL(q || pi) and alpha 1 is KL(pi || q): swapping the two models swaps the two ends."""
    assert float(distill_divergence(PI, Q, 0.0)) == pytest.approx(float(distill_divergence(Q, PI, 1.0)), abs=1e-7)
    assert float(distill_divergence(PI, Q, 1.0)) == pytest.approx(float(distill_divergence(Q, PI, 0.0)), abs=1e-7)
    assert float(distill_divergence(PI, PI + 3.0, 0.5)) == pytest.approx(0.0, abs=1e-7)  # same distribution: 0


def test_temperature_divides_both_sides():
    # logits twice the ones above at temperature 2 are the same distributions: the same values by hand
    assert float(distill_divergence(2 * PI, 2 * Q, 0.0, temperature=2.0)) == pytest.approx(FORWARD, abs=1e-5)
    assert float(distill_divergence(2 * PI, 2 * Q, 1.0, temperature=2.0)) == pytest.approx(REVERSE, abs=1e-5)
    # at temperature 2 the teacher's own logits become (ln 0.8, ln 0.2) / 2: q_T = (sqrt .8, sqrt .2) / (sqrt .8 +
    # sqrt .2) = (0.894427, 0.447214) / 1.341641 = (2/3, 1/3); forward KL = 2/3 ln(4/3) + 1/3 ln(2/3)
    # = 0.191788 - 0.135155 = 0.056633
    assert float(distill_divergence(PI, Q, 0.0, temperature=2.0)) == pytest.approx(0.056633, abs=1e-5)


def test_loss_averages_each_sequence_over_its_tokens_then_the_sequences():
    """Sequence A: two tokens, (pi, q) then (pi, pi), divergences FORWARD and 0: its mean FORWARD / 2. Sequence B: one
    real token (q, pi): reverse of the above at alpha 0 = REVERSE, then a padding position whose logits would add a
    large divergence if it counted. Loss = (FORWARD / 2 + REVERSE) / 2 = (0.096373 + 0.223144) / 2 = 0.159758."""
    student = torch.stack([torch.stack([PI, PI]), torch.stack([Q, torch.tensor([9.0, -9.0])])])
    teacher = torch.stack([torch.stack([Q, PI]), torch.stack([PI, torch.tensor([-9.0, 9.0])])])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert float(self_distill_loss(student, teacher, mask, alpha=0.0)) == pytest.approx(0.159758, abs=1e-5)
    # a sequence with no completion token adds 0 (and no nan)
    assert float(self_distill_loss(student, teacher, torch.zeros(2, 2), alpha=0.5)) == 0.0


def test_forward_kl_gradient_is_pi_minus_q():
    """d KL(q || softmax(s)) / d s = softmax(s) - q = (0.5 - 0.8, 0.5 - 0.2) = (-0.3, 0.3): pi is pulled toward q."""
    s = PI.clone().view(1, 1, 2).requires_grad_(True)
    self_distill_loss(s, Q.view(1, 1, 2), torch.ones(1, 1), alpha=0.0).backward()
    assert s.grad.view(-1).tolist() == pytest.approx([-0.3, 0.3], abs=1e-6)


def test_bad_alpha_or_temperature_is_refused():
    with pytest.raises(ValueError):
        distill_divergence(PI, Q, alpha=1.5)
    with pytest.raises(ValueError):
        distill_divergence(PI, Q, alpha=0.5, temperature=0.0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_same_convention_and_reduction_as_trl(alpha):
    """TRL sdft's full-vocabulary loss (per-token divergence, mean per sequence, then over sequences) and GKD's
    generalized_jsd_loss (beta = alpha) on one unpadded sequence give our numbers."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
        from trl.experimental.sdft.loss_utils import compute_full_logit_self_distillation_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    per_token = compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=alpha)
    trl_loss = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    assert float(self_distill_loss(student, teacher, mask, alpha)) == pytest.approx(float(trl_loss), abs=1e-6)
    gkd = GKDTrainer.generalized_jsd_loss(student[:1], teacher[:1], labels=torch.zeros(1, 5, dtype=torch.long),
                                          beta=alpha)  # with labels: the mean over the batch's supervised tokens
    assert float(self_distill_loss(student[:1], teacher[:1], torch.ones(1, 5), alpha)) == pytest.approx(
        float(gkd), abs=1e-6)


# --- config -----------------------------------------------------------------------------------------------------------

def test_config_errors_are_one_line():
    with pytest.raises(InputError, match="self_distill.num_generations"):
        load_config("smoke", [("self_distill.num_generations", "3")])
    with pytest.raises(InputError, match="self_distill.name"):
        load_config("smoke", [("self_distill.name", "posterior")])
    with pytest.raises(InputError, match="self_distill.distillation_alpha"):
        load_config("smoke", [("self_distill.distillation_alpha", "2")])


def test_declared_as_on_policy_with_q_as_the_teacher():
    from varreason.stages.methods import METHODS

    m = METHODS["self-distill"]
    assert m.stages == ("posterior", "self-distill")  # q is trained, then distilled into pi
    assert m.overrides()["sample.proposal"] == "posterior"  # so that the posterior stage trains q
    assert m.model(load_config("smoke")) == "self-distill"


# --- end to end on the smoke preset ------------------------------------------------------------------------------------

def _digest(folder) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from varreason.cli import main

    out = tmp_path_factory.mktemp("self-distill") / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--until", "posterior"]) == 0
    q_before = _digest(out / "models" / "posterior")
    assert main(["self-distill", "--config", "smoke", "--output-dir", str(out)]) == 0
    return out, q_before


@pytest.mark.slow
def test_stage_writes_its_model_losses_and_compute(distilled):
    import pandas as pd

    out, _ = distilled
    cfg = load_config("smoke")
    assert (out / "models" / "self-distill" / "config.json").exists()
    losses = pd.read_parquet(out / "self_distill" / "self-distill" / "losses.parquet")
    samples = pd.read_parquet(out / "self_distill" / "self-distill" / "samples.parquet")
    assert list(losses["step"]) == list(range(cfg.self_distill.max_steps))  # one micro-batch per optimiser step
    assert (losses["sequences"] == cfg.self_distill.per_device_train_batch_size).all()
    assert losses["loss"].gt(0).all() and losses["loss"].map(math.isfinite).all()
    assert len(samples) == cfg.self_distill.max_steps * cfg.self_distill.per_device_train_batch_size
    # each prompt's num_generations completions in one batch
    assert samples.groupby(["step", "question_id"]).size().eq(cfg.self_distill.num_generations).all()
    counts = json.loads((out / "manifest.json").read_text())["stages"]["self-distill"]["counts"]
    c = counts["compute"]
    assert c["generated"] == int(losses["completion_tokens"].sum()) == int(samples["completion_tokens"].sum())
    # the teacher reads its (longer, hinted) prompt + each completion; the student trains on its prompt + completion
    assert c["scored"] > c["trained"] > c["generated"] > 0 and c["prefilled"] > 0
    assert counts["optimizer_steps"] == cfg.self_distill.max_steps and counts["teacher"] == "posterior (frozen)"


@pytest.mark.slow
def test_q_is_frozen_and_pi_moves(distilled):
    out, q_before = distilled
    assert _digest(out / "models" / "posterior") == q_before
    assert _digest(out / "models" / "self-distill") != _digest(out / "models" / "initial")


@pytest.mark.slow
def test_teacher_reads_its_hinted_prompt_then_the_students_exact_completion_ids(distilled):
    """What makes the method: the teacher's input is q's hinted prompt (the posterior stage's own) followed by the very
    ids the student sampled, never re-tokenised; the student's is its own prompt (no hint) followed by the same ids."""
    from datasets import Dataset

    from varreason.models import load_model, load_tokenizer
    from varreason.runs import RunDir
    from varreason.stages.common import sampled_questions
    from varreason.stages.self_distill import SelfDistillTrainer, distill_rows, sdft_config
    from varreason.templates import Templates

    out, _ = distilled
    cfg = load_config("smoke")
    run = RunDir(out)
    tokenizer = load_tokenizer(out / "models" / "initial")
    templates = Templates(cfg.format, tokenizer)
    problems = sampled_questions(cfg, run)[:2]
    rows = distill_rows(cfg, templates, problems)
    trainer = SelfDistillTrainer(
        model=load_model(out / "models" / "initial", training=True), args=sdft_config(cfg, out / "probe.work", None),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, teacher_dir=str(out / "models" / "posterior"),
        problems={p.id: p for p in problems}, templates=templates)
    batch = trainer._prepare_training_batch([rows[0], rows[0], rows[1], rows[1]])
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    for i, row in enumerate([rows[0], rows[0], rows[1], rows[1]]):
        completion = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        assert completion and len(completion) == int(batch["raw_completion_lengths"][i])
        teacher = batch["teacher_input_ids"][i][batch["teacher_attention_mask"][i].bool()].tolist()
        student = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
        assert teacher == ids(row["privileged_context"]) + completion
        assert student == ids(row["prompt"])
        assert row["privileged_context"] == templates.posterior_prompt(problems[i // 2].question, problems[i // 2].answer)
        assert problems[i // 2].answer in row["privileged_context"] and "Correct answer" not in row["prompt"]
    assert trainer.teacher_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())


@pytest.mark.slow
def test_refuses_a_run_without_q(distilled):
    from varreason.runs import RunDir
    from varreason.stages.self_distill import stage_self_distill

    out, _ = distilled
    cfg = load_config("smoke", [("sample.proposal", "prior")])
    with pytest.raises(InputError, match="sample.proposal"):
        stage_self_distill(cfg, RunDir(out))
