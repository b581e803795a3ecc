"""TRICE: the control variate's weights by hand, the chain's move, one online step by hand, signed weighted SFT, and
the stage on the smoke preset: the online schedule (its steps, artifacts and counts, proposals from the model of the
step before, a kill resumed to the same chains) and the rounds schedule (its rounds, artifacts and counts, and a kill in
the last round resumed without redoing the first)."""

import json
import shutil
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from varreason import objectives
from varreason.cli import main
from varreason.config import FormatConfig, RunConfig, SFTConfig
from varreason.errors import InputError
from varreason.runs import RunDir
from varreason.stages import trice
from varreason.tasks.base import Problem
from varreason.templates import Templates

# --- the weights, by hand -------------------------------------------------------------------------------------------


def test_trice_weights_on_a_toy_group_by_hand():
    # 5 chains. c = proposal verified, m = memory (before the move) verified, mask = c or m:
    #   c    = [1, 0, 0, 1, 0]
    #   m    = [0, 1, 1, 0, 0]
    #   mask = [1, 1, 1, 1, 0]   sum c = 2, sum mask = 4, so the denominator is 4 - 1 (+1e-10) = 3
    # beta_n = (sum c - c_n) / 3:  chain 0: (2-1)/3 = 1/3; chain 1: (2-0)/3 = 2/3; chain 2: 2/3; chain 3: 1/3;
    #   chain 4: mask 0, no gradient: 0
    # memory weight mask (1 - beta c):   0: 1 - 1/3 = 2/3;  1: 1 - 0 = 1;  2: 1;  3: 2/3;  4: 0
    # proposal weight -mask beta (1 - c): 0: 0 (accepted);  1: -2/3;  2: -2/3;  3: 0;  4: 0
    c, m = [True, False, False, True, False], [False, True, True, False, False]
    beta = objectives.trice_control_variate(c, m)
    memory, proposal = objectives.trice_weights(c, m)
    np.testing.assert_allclose(beta, [1 / 3, 2 / 3, 2 / 3, 1 / 3, 0.0], rtol=1e-9)
    np.testing.assert_allclose(memory, [2 / 3, 1.0, 1.0, 2 / 3, 0.0], rtol=1e-9)
    np.testing.assert_allclose(proposal, [0.0, -2 / 3, -2 / 3, 0.0, 0.0], rtol=1e-9)
    assert not np.signbit(proposal[[0, 3, 4]]).any()  # a plain 0, never -0.0, where nothing is pushed down


def test_beta_leaves_the_chains_own_proposal_out():
    # chain 0's memory is correct (mask_0 = 1 whatever its proposal), so flipping its own proposal's verdict must not
    # change beta_0: beta_0 = (sum over the others of c) / (sum over the others of mask) = 1 / 2 both times
    #   (others: c = [1, 0, 0], mask = [1, 1, 0])
    m = [True, True, True, False]
    for c0 in (False, True):
        beta = objectives.trice_control_variate([c0, True, False, False], m)
        assert beta[0] == pytest.approx(0.5)


def test_per_chain_gradient_is_memory_minus_beta_times_proposal():
    # the notebook's gradient per chain: mask [grad log p(z~_new) - beta grad log p(z')]. When the chain moved
    # (c = 1) z~_new IS z', so its two rows add up on z': memory + proposal weight = 1 - beta; when it did not
    # (c = 0, m = 1) the memory gets +1 and the proposal -beta.
    c, m = [True, False, True, False], [True, True, False, False]
    beta = objectives.trice_control_variate(c, m)
    memory, proposal = objectives.trice_weights(c, m)
    mask = np.array(c) | np.array(m)
    for n in range(4):
        if c[n]:
            assert memory[n] + proposal[n] == pytest.approx(1 - beta[n])
        elif mask[n]:
            assert (memory[n], proposal[n]) == (1.0, pytest.approx(-beta[n]))
        else:
            assert (memory[n], proposal[n]) == (0.0, 0.0)


def test_the_gradient_vanishes_when_every_proposal_is_accepted():
    # every proposal right: beta_n = (N - 1) / (N - 1) = 1 for all n, so mask (1 - beta c) = 0 and the proposals'
    # weights are 0 too: the control variate drives the variance to 0 as the model improves (the paper's claim)
    memory, proposal = objectives.trice_weights([True] * 4, [False, True, False, True])
    np.testing.assert_allclose(memory, 0.0, atol=1e-9)
    np.testing.assert_allclose(proposal, 0.0, atol=1e-9)


def test_no_correct_state_means_no_gradient_and_no_blow_up():
    # nothing verified: mask = 0 everywhere, the denominator is -1 + 1e-10; beta 0 and every weight 0
    beta = objectives.trice_control_variate([False] * 3, [False] * 3)
    memory, proposal = objectives.trice_weights([False] * 3, [False] * 3)
    assert beta.tolist() == memory.tolist() == proposal.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one verdict per chain"):
        objectives.trice_weights([True], [True, False])


# --- the chain's move and the round's rows -------------------------------------------------------------------------

def _row(qid, trace, correct, finished=True, answer="7", text=None):
    return {"question_id": qid, "trace": trace, "posterior_answer": answer, "correct": correct, "finished": finished,
            "text": text if text is not None else f"{trace}</think><answer>{answer}</answer>"}


def test_a_chain_moves_only_to_a_verified_finished_proposal_and_the_rows_are_signed():
    memory = {"a": {**_row("a", "old-a", True), "state_correct": True},   # right memory, wrong proposal: stays
              "b": {**_row("b", "old-b", False), "state_correct": False},  # wrong memory, right proposal: moves
              "c": {**_row("c", "old-c", True), "state_correct": True},   # right proposal, but unfinished: stays
              "d": {**_row("d", "old-d", False), "state_correct": False}}  # nothing right: no gradient
    proposals = {"a": _row("a", "new-a", False, answer="9"), "b": _row("b", "new-b", True),
                 "c": _row("c", "new-c", True, finished=False), "d": _row("d", "new-d", False)}
    chain = trice.move_chains(memory, proposals, require_finished=True)
    assert [s["moved"] for s in chain] == [False, True, False, False]
    assert [s["trace"] for s in chain] == ["old-a", "new-b", "old-c", "old-d"]
    assert [s["correct"] for s in chain] == [True, True, True, False]
    # c = [0, 1, 0, 0], mask = [1, 1, 1, 0], sum c = 1, denominator 2: beta = [1/2, 0, 1/2, 0]
    assert [s["beta"] for s in chain] == pytest.approx([0.5, 0.0, 0.5, 0.0])
    problems = {q: Problem(id=q, question=f"question {q}", answer="7", trace="t", task="sum", difficulty=1)
                for q in "abcd"}
    templates = Templates(FormatConfig())
    rows = trice.training_rows(chain, problems, templates, round=1)
    got = {(r["question_id"], r["source"]): r for r in rows}
    assert set(got) == {("a", "trice-memory"), ("a", "trice-proposal"), ("b", "trice-memory"),
                        ("c", "trice-memory"), ("c", "trice-proposal")}
    assert got[("a", "trice-memory")]["weight"] == 1.0
    assert got[("a", "trice-proposal")]["weight"] == pytest.approx(-0.5)
    assert got[("b", "trice-memory")]["weight"] == 1.0  # moved: 1 - beta c = 1 - 0
    assert got[("a", "trice-proposal")]["completion"] == proposals["a"]["text"]  # pushed down as it was sampled
    assert got[("b", "trice-memory")]["completion"] == templates.completion("new-b", "7")
    assert all(r["prompt"] == templates.prompt(problems[r["question_id"]].question) for r in rows)  # no hint
    counts = trice.round_counts(chain, rows)
    assert counts["acceptance_rate"] == 0.25 and counts["correct_state_share"] == 0.75
    assert counts["mean_beta"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert counts["negative_weight"] == pytest.approx(-1.0) and counts["positive_weight"] == pytest.approx(3.0)


def test_one_online_step_by_hand():
    # 4 chains in one step of 2 micro-batches, [a, b] and [c, d]; the memory (m) and the step's proposals (c):
    #   a: memory right, proposal wrong (c 0, m 1): stays     b: memory wrong, proposal right (c 1, m 0): moves
    #   c: both right (c 1, m 1): moves                       d: nothing right (c 0, m 0): no gradient
    # mask = [1, 1, 1, 0], sum c = 2, sum mask - 1 = 2 (+1e-10): beta = (2 - c_n) / 2 = [1, 1/2, 1/2, 0 (mask 0)]
    # memory weight mask (1 - beta c) = [1, 1/2, 1/2, 0]; proposal weight -mask beta (1 - c) = [-1, 0, 0, 0]
    # rows: micro-batch 1: a's memory +1, a's proposal -1, b's new state +1/2; micro-batch 2: c's new state +1/2
    memory = {"a": {**_row("a", "old-a", True), "state_correct": True},
              "b": {**_row("b", "old-b", False), "state_correct": False},
              "c": {**_row("c", "old-c", True), "state_correct": True},
              "d": {**_row("d", "old-d", False), "state_correct": False},
              "e": {**_row("e", "old-e", True), "state_correct": True}}  # not in this step: untouched
    proposals = {"a": _row("a", "new-a", False), "b": _row("b", "new-b", True), "c": _row("c", "new-c", True),
                 "d": _row("d", "new-d", False)}
    problems = {q: Problem(id=q, question=f"question {q}", answer="7", trace=f"teacher {q}", task="sum", difficulty=1)
                for q in "abcde"}
    templates, cfg = Templates(FormatConfig()), RunConfig()
    state = {q: dict(m) for q, m in memory.items()}
    chain, rows = trice.online_step(state, proposals, [["a", "b"], ["c", "d"]], problems, templates, cfg.trice, 7)
    assert [s["question_id"] for s in chain] == list("abcd") and {s["step"] for s in chain} == {7}
    assert [s["beta"] for s in chain] == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert [s["moved"] for s in chain] == [False, True, True, False]
    got = [[(r["question_id"], r["source"], r["weight"], r["step"]) for r in batch] for batch in rows]
    assert got == [[("a", "trice-memory", 1.0, 7), ("a", "trice-proposal", pytest.approx(-1.0), 7),
                    ("b", "trice-memory", pytest.approx(0.5), 7)],
                   [("c", "trice-memory", pytest.approx(0.5), 7)]]
    assert rows[0][1]["completion"] == proposals["a"]["text"]  # pushed down exactly as it was sampled
    assert rows[0][2]["completion"] == templates.completion("new-b", "7")  # b's new state, trained up
    assert {q: (s["trace"], s["state_correct"]) for q, s in state.items()} == {
        "a": ("old-a", True), "b": ("new-b", True), "c": ("new-c", True), "d": ("old-d", False), "e": ("old-e", True)}
    cfg.trice.mix = True  # + each micro-batch's teacher rows, weight 1
    _, mixed = trice.online_step({q: dict(m) for q, m in memory.items()}, proposals, [["a", "b"], ["c", "d"]],
                                 problems, templates, cfg.trice, 7)
    assert [[r["source"] for r in batch][-2:] for batch in mixed] == [["teacher", "teacher"]] * 2
    assert [r["question_id"] for r in mixed[1] if r["source"] == "teacher"] == ["c", "d"]


def test_a_micro_batch_without_a_gradient_trains_one_row_at_weight_zero(tiny_model_dir):
    from varreason import compute
    from varreason.models import load_tokenizer
    from varreason.training import WeightedCollator

    tok = load_tokenizer(tiny_model_dir)
    templates = Templates(FormatConfig(), tok)
    problems = [Problem(id="d", question="1+2=?", answer="3", trace="1+2=3", task="sum", difficulty=1)]
    memory = {"d": {"trace": "1+2=4", "posterior_answer": "4", "finished": True, "state_correct": False}}
    chains = trice.Chains(RunConfig(), None, problems, templates, memory, WeightedCollator(tok.pad_token_id), "sdpa")
    compute.take()
    empty = chains.batch(None, [], "d")
    assert empty["weight"].tolist() == [0.0] and compute.take().trained == 0  # runs, no gradient, not counted
    row = {"prompt": templates.prompt("1+2=?"), "completion": templates.completion("1+2=3", "3"), "weight": -0.5}
    batch = chains.batch(None, [row], "d")
    assert batch["weight"].tolist() == [-0.5]
    assert compute.take().trained == int(batch["attention_mask"].sum())  # the row's prompt + completion tokens


def test_a_step_never_holds_a_question_twice(tmp_path):
    cfg = RunConfig()
    cfg.trice.per_device_train_batch_size = 4
    problems = [Problem(id=str(i), question="q", answer="1", trace="t", task="sum", difficulty=1) for i in range(3)]
    with pytest.raises(InputError, match="twice"):
        trice.online_schedule(cfg, RunDir(tmp_path), problems, None, {})


def test_steps_are_split_over_the_rounds():
    assert trice.round_steps(250, 4) == [63, 63, 62, 62]  # 250 = 4 x 62 + 2: the first two rounds take one more
    assert trice.round_steps(4, 2) == [2, 2]
    with pytest.raises(InputError, match="at least one"):
        trice.round_steps(3, 4)


def test_q_memory_needs_q_samples(tmp_path):
    cfg = RunConfig()
    cfg.sample.proposal = "prior"
    with pytest.raises(InputError, match="sample.proposal"):
        trice.initial_memory(cfg, RunDir(tmp_path), [])


# --- signed weighted SFT ---------------------------------------------------------------------------------------------

def test_negative_weights_only_when_asked(tiny_model_dir):
    from varreason.models import load_tokenizer
    from varreason.training import tokenize_examples

    tok = load_tokenizer(tiny_model_dir)
    row = {"prompt": "a", "completion": "b", "weight": -0.5}
    with pytest.raises(InputError, match=">= 0"):
        tokenize_examples([row], tok, 64)
    assert tokenize_examples([row], tok, 64, signed=True).features[0]["weight"] == -0.5
    with pytest.raises(InputError, match="finite"):
        tokenize_examples([{**row, "weight": float("inf")}], tok, 64, signed=True)


@pytest.mark.slow
def test_a_negative_weight_pushes_the_likelihood_down(tiny_model_dir, tmp_path):
    import torch
    from conftest import toy_problems

    from varreason.models import load_model, load_tokenizer
    from varreason.objectives import token_nll
    from varreason.training import tokenize_examples, train_sft

    tok = load_tokenizer(tiny_model_dir)
    t = Templates(FormatConfig(), tok)
    q, z, y = toy_problems(1)[0]
    rows = [{"prompt": t.prompt(q), "completion": t.completion(z, y), "weight": -1.0}] * 8

    def nll(model_dir):
        f = tokenize_examples(rows[:1], tok, 128, signed=True).features[0]
        with torch.no_grad():
            logits = load_model(model_dir)(torch.tensor([f["input_ids"]])).logits
        loss, mask = token_nll(logits, torch.tensor([f["labels"]]))
        return float(loss.sum() / mask.sum())

    cfg = SFTConfig(learning_rate=5e-3, max_steps=3, per_device_train_batch_size=8, report_to=[], warmup_ratio=0.0)
    train_sft(tiny_model_dir, rows, cfg, tmp_path / "down", signed=True)
    assert nll(tmp_path / "down") > nll(tiny_model_dir) + 0.01


# --- the stage on the smoke preset -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare's trice method on the smoke preset: the online schedule (the default), 4 steps of 16 of 24 questions."""
    out = tmp_path_factory.mktemp("trice") / "cmp"
    assert main(["compare", "--config", "smoke", "--output-dir", str(out), "--compare.methods", "[trice]"]) == 0
    return out / "methods" / "trice"


@pytest.fixture(scope="module")
def rounds_run(compared, tmp_path_factory):
    """The same folder with the stage redone on the rounds schedule (2 rounds of 2 steps)."""
    run = tmp_path_factory.mktemp("trice-rounds") / "trice"
    shutil.copytree(compared, run, symlinks=True)
    assert main(["trice", "--output-dir", str(run), "--trice.schedule", "rounds", "--overwrite"]) == 0
    return run


def _counts(run):
    """The trice stage's counts in the run's manifest."""
    return json.loads((run / "manifest.json").read_text())["stages"]["trice"]["counts"]


def _half_right(row, require_finished):
    """A verifier that passes about half the traces (the smoke model solves nothing), the same on every call."""
    return zlib.crc32(row["trace"].encode()) % 2 == 1


@pytest.mark.slow
def test_the_online_stage_writes_its_model_steps_chains_and_counts(compared):
    from varreason.models import load_tokenizer

    run = compared
    assert (run / "models" / "trice" / "config.json").exists()
    counts = _counts(run)
    assert counts["schedule"] == "online" and counts["memory_init"] == "q" and counts["questions"] == 24
    assert counts["optimizer_steps"] == 4 and counts["questions_per_step"] == 16  # the final model's 4 steps
    assert counts["proposals"] == 4 * 16
    steps = pq.read_table(run / "trice" / "trice" / "steps.parquet").to_pylist()
    assert len(steps) == 64 and [s["step"] for s in steps] == [t for t in (1, 2, 3, 4) for _ in range(16)]
    for t in (1, 2, 3, 4):  # each step moves 16 distinct chains; a 24-question epoch is 2 steps (the 2nd filled up)
        assert len({s["question_id"] for s in steps if s["step"] == t}) == 16
    assert {s["question_id"] for s in steps if s["step"] <= 2} == {s["question_id"] for s in steps if s["step"] > 2}
    assert counts["acceptance_rate"] == sum(s["moved"] for s in steps) / 64
    assert len(counts["acceptance_rate_by_window"]) == len(counts["mean_beta_by_window"]) == 2  # logging_steps 2
    assert len(pq.read_table(run / "trice" / "trice" / "chains.parquet")) == 24
    assert len(pq.read_table(run / "trice" / "trice" / "memory.parquet")) == 24
    rows = pq.read_table(run / "train" / "trice.parquet").to_pylist()
    assert {r["step"] for r in rows} == {1, 2, 3, 4} and counts["rows"] == len(rows)
    # the compute account: every proposal's prompt read once, every trained row's tokens (smoke: the teacher rows)
    tok = load_tokenizer(run / "models" / "initial")
    t = Templates(FormatConfig(), tok)
    questions = {r["id"]: r["question"] for r in pq.read_table(run / "data" / "train.parquet").to_pylist()}
    prompts = [len(tok(t.prompt(questions[s["question_id"]]), add_special_tokens=False)["input_ids"]) for s in steps]
    trained = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
               + len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert counts["compute"]["prefilled"] == sum(prompts) and counts["compute"]["trained"] == sum(trained)
    assert counts["compute"]["generated"] > 0
    assert not list(run.rglob(".shards-*"))  # the checkpoints are dropped once the stage is recorded


@pytest.mark.slow
def test_each_step_proposes_with_the_model_the_step_before_left(compared, tmp_path, monkeypatch):
    """The weights that write step t's proposals are exactly those after optimiser step t - 1 (pi0's for step 1)."""
    import torch
    from transformers import TrainerCallback

    from varreason.models import load_model

    run = tmp_path / "trice"
    shutil.copytree(compared, run, symlinks=True)
    seen, after = [], []

    def weights(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    class AfterEachStep(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            after.append(weights(model))

    real_propose, real_output = trice.propose, trice.trainer_output
    monkeypatch.setattr(trice, "propose", lambda model, *a, **k: (seen.append(weights(model)),
                                                                 real_propose(model, *a, **k))[1])
    monkeypatch.setattr(trice, "trainer_output", lambda trainer, label: (real_output(trainer, label),
                                                                         trainer.add_callback(AfterEachStep())))
    assert main(["trice", "--output-dir", str(run), "--force"]) == 0
    assert len(seen) == len(after) == 4
    pi0 = load_model(run / "models" / "initial").state_dict()
    assert all(torch.equal(seen[0][k], pi0[k]) for k in pi0)
    for t in (1, 2, 3):
        assert all(torch.equal(seen[t][k], after[t - 1][k]) for k in pi0), f"step {t + 1} proposed with stale weights"
    for t in (2, 3):  # the model did move (step 1 is the warm-up's, at learning rate 0)
        assert not all(torch.equal(seen[t][k], seen[t - 1][k]) for k in pi0)


@pytest.mark.slow
def test_a_killed_online_run_resumes_to_the_same_chains_rows_model_and_compute(compared, tmp_path, monkeypatch):
    """Killed in step 3 (checkpoint at step 2, smoke's save_steps), the resumed stage proposes for steps 3 and 4 only
    and ends with the very steps, chains, rows, weights and compute account of an uninterrupted run."""
    import torch

    from varreason.models import load_model

    monkeypatch.setattr(trice, "is_correct_state", _half_right)  # chains that move, signed rows
    args = ["--trice.mix", "false", "--overwrite"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for run in (whole, killed):
        shutil.copytree(compared, run, symlinks=True)
    assert main(["trice", "--output-dir", str(whole), *args]) == 0
    real, calls = trice.online_step, []

    def killed_in_step_3(memory, proposals, micro_batches, problems, templates, t, step):
        calls.append(step)
        if step == 3 and len(calls) == 3:
            raise KeyboardInterrupt
        return real(memory, proposals, micro_batches, problems, templates, t, step)

    monkeypatch.setattr(trice, "online_step", killed_in_step_3)
    assert main(["trice", "--output-dir", str(killed), *args]) == 130
    assert [p.name for p in killed.rglob("checkpoint-*")] == ["checkpoint-2"]
    assert main(["trice", "--output-dir", str(killed), *args]) == 0
    assert calls == [1, 2, 3, 3, 4]  # the resumed run starts at step 3

    def read(run, rel):
        return pq.read_table(run / rel).to_pylist()

    for rel in ("trice/trice/steps.parquet", "trice/trice/chains.parquet", "train/trice.parquet"):
        assert read(killed, rel) == read(whole, rel), rel
    steps = read(whole, "trice/trice/steps.parquet")
    assert any(s["moved"] for s in steps) and any(r["weight"] < 0 for r in read(whole, "train/trice.parquet"))
    a, b = (load_model(run / "models" / "trice").state_dict() for run in (whole, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    counts = [_counts(run) for run in (whole, killed)]
    assert counts[1]["resumed_from"] and not counts[0]["resumed_from"]
    for key in ("generated", "prefilled", "trained", "trained_context"):
        assert counts[1]["compute"][key] == counts[0]["compute"][key], key
    assert counts[1]["acceptance_rate_by_window"] == counts[0]["acceptance_rate_by_window"]


@pytest.mark.slow
def test_the_rounds_stage_writes_its_model_rows_chains_and_counts_per_round(rounds_run):
    run = rounds_run
    assert (run / "models" / "trice" / "config.json").exists()
    counts = _counts(run)
    assert counts["schedule"] == "rounds" and counts["memory_init"] == "q" and counts["questions"] == 24
    assert [r["round"] for r in counts["rounds"]] == [1, 2]
    assert [r["optimizer_steps"] for r in counts["rounds"]] == [2, 2]  # the final model's 4 steps, split over 2
    assert len(counts["acceptance_rate_by_round"]) == len(counts["mean_beta_by_round"]) == 2
    samples = pq.read_table(run / "samples" / "posterior.parquet").to_pylist()
    assert len(samples) == 24  # the method samples q once per question: one first state per chain
    assert len(pq.read_table(run / "trice" / "trice" / "memory.parquet")) == 24
    for r in (1, 2):
        chain = pq.read_table(run / "trice" / "trice" / f"round-{r}" / "chain.parquet").to_pylist()
        assert len(chain) == 24 and len(pq.read_table(run / "trice" / "trice" / f"round-{r}" / "proposals.parquet")) == 24
        assert {"question_id", "trace", "correct", "moved", "beta", "memory_weight", "proposal_weight"} <= set(chain[0])
        assert sum(s["moved"] for s in chain) / 24 == counts["acceptance_rate_by_round"][r - 1]
    rows = pq.read_table(run / "train" / "trice.parquet").to_pylist()
    assert {row["round"] for row in rows} == {1, 2}
    assert counts["rows"] == len(rows)
    assert not list(run.rglob(".shards-*"))  # the rounds' work is dropped once the stage is recorded
    assert counts["compute"]["trained"] > 0 and counts["compute"]["generated"] > 0


@pytest.mark.slow
def test_a_kill_in_the_last_round_resumes_without_redoing_the_first(rounds_run, monkeypatch):
    run = rounds_run
    before = pq.read_table(run / "trice" / "trice" / "round-1" / "proposals.parquet").to_pylist()
    calls = []

    def killed_in_round_2(base, rows, cfg, out_dir, **kwargs):
        calls.append(out_dir.name)
        if out_dir.name == "trice":  # the last round writes models/trice
            raise KeyboardInterrupt
        return real(base, rows, cfg, out_dir, **kwargs)

    real = trice.train_sft
    monkeypatch.setattr(trice, "train_sft", killed_in_round_2)
    shutil.rmtree(run / "models" / "trice")  # the stage is not done any more: it runs again
    assert main(["trice", "--output-dir", str(run)]) == 130
    assert calls == ["trice-round1", "trice"]
    assert list(run.rglob(".shards-*"))  # round 1's proposals and model wait for the resume
    calls.clear()
    monkeypatch.setattr(trice, "train_sft", lambda *a, **k: (calls.append(a[3].name), real(*a, **k))[1])
    assert main(["trice", "--output-dir", str(run)]) == 0
    assert calls == ["trice"]  # round 1's model was not trained again
    assert pq.read_table(run / "trice" / "trice" / "round-1" / "proposals.parquet").to_pylist() == before
    counts = _counts(run)
    assert [r["optimizer_steps"] for r in counts["rounds"]] == [2, 2]
    assert not list(run.rglob(".shards-*"))


@pytest.mark.slow
def test_chains_persist_across_rounds_and_train_on_signed_rows(rounds_run, tmp_path, monkeypatch):
    """With a verifier that passes about half the traces (the smoke model solves nothing), the stage trains on signed
    rows whose weights are the chain's, and round 2's chains start from round 1's states."""
    run = tmp_path / "trice"
    shutil.copytree(rounds_run, run, symlinks=True)
    monkeypatch.setattr(trice, "is_correct_state", _half_right)
    assert main(["trice", "--output-dir", str(run), "--trice.mix", "false", "--overwrite"]) == 0
    chains = [pq.read_table(run / "trice" / "trice" / f"round-{r}" / "chain.parquet").to_pylist() for r in (1, 2)]
    for before, after in zip(chains[0], chains[1]):  # the same question order in both rounds
        assert after["memory_was_correct"] == before["correct"]
        kept = after["trace"] == (after["proposal_trace"] if after["moved"] else before["trace"])
        assert kept, "a chain must keep its state unless its proposal was accepted"
    for chain in chains:
        memory, proposal = objectives.trice_weights([s["proposal_correct"] for s in chain],
                                                    [s["memory_was_correct"] for s in chain])
        np.testing.assert_allclose([s["memory_weight"] for s in chain], memory)
        np.testing.assert_allclose([s["proposal_weight"] for s in chain], proposal)
    rows = pq.read_table(run / "train" / "trice.parquet").to_pylist()
    assert {r["source"] for r in rows} == {"trice-memory", "trice-proposal"}
    assert any(r["weight"] < 0 for r in rows) and all(r["weight"] < 0 for r in rows if r["source"] == "trice-proposal")
    counts = _counts(run)
    assert [r["rows"] for r in counts["rounds"]] == [sum(r["round"] == k for r in rows) for k in (1, 2)]
    assert all(0.0 <= b <= 1.0 for b in counts["mean_beta_by_round"])
