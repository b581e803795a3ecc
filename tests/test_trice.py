"""TRICE: the control variate's weights by hand, the chain's move, signed weighted SFT, and the stage on the smoke
preset (its rounds, artifacts and counts, and a kill in the last round resumed without redoing the first)."""

import json
import shutil

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
    out = tmp_path_factory.mktemp("trice") / "cmp"
    assert main(["compare", "--config", "smoke", "--output-dir", str(out), "--compare.methods", "[trice]"]) == 0
    return out / "methods" / "trice"


@pytest.mark.slow
def test_the_stage_writes_its_model_rows_chains_and_counts_per_round(compared):
    run = compared
    assert (run / "models" / "trice" / "config.json").exists()
    counts = json.loads((run / "manifest.json").read_text())["stages"]["trice"]["counts"]
    assert counts["memory_init"] == "q" and counts["questions"] == 24
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
def test_a_kill_in_the_last_round_resumes_without_redoing_the_first(compared, monkeypatch):
    run = compared
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
    counts = json.loads((run / "manifest.json").read_text())["stages"]["trice"]["counts"]
    assert [r["optimizer_steps"] for r in counts["rounds"]] == [2, 2]
    assert not list(run.rglob(".shards-*"))


@pytest.mark.slow
def test_chains_persist_across_rounds_and_train_on_signed_rows(compared, tmp_path, monkeypatch):
    """With a verifier that passes about half the traces (the smoke model solves nothing), the stage trains on signed
    rows whose weights are the chain's, and round 2's chains start from round 1's states."""
    import zlib

    run = tmp_path / "trice"
    shutil.copytree(compared, run, symlinks=True)
    monkeypatch.setattr(trice, "is_correct_state", lambda row, require_finished: zlib.crc32(row["trace"].encode()) % 2)
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
    counts = json.loads((run / "manifest.json").read_text())["stages"]["trice"]["counts"]
    assert [r["rows"] for r in counts["rounds"]] == [sum(r["round"] == k for r in rows) for k in (1, 2)]
    assert all(0.0 <= b <= 1.0 for b in counts["mean_beta_by_round"])
