"""Algorithm 1 in full: the forward-KL posterior's training rows worked out by hand, the reference solution as the
hint, the paper-style baseline, the 1K recipe's scaled batch, and T = 2 rounds on the smoke preset."""

import contextlib
import json
import os

import pyarrow.parquet as pq
import pytest

from varreason.cli import main
from varreason.config import load_config
from varreason.errors import InputError
from varreason.pipeline import ROUND_STAGES
from varreason.runs import RunDir
from varreason.stages import variational
from varreason.stages.common import check_hints, load_problems
from varreason.tasks.base import Problem
from varreason.templates import Templates


def rows(path):
    return pq.read_table(path).to_pylist()


def _problem(pid: str, answer: str, solution: str = "") -> Problem:
    return Problem(id=pid, question=f"{pid}=?", answer=answer, trace=f"teacher {pid}", task="sum", difficulty=1,
                   meta={"solution": solution} if solution else {})


class _FakeEngine:
    tokenizer = None  # Templates renders without one

    def with_batch_size(self, batch_size):
        return self


def test_forward_kl_rows_by_hand(tmp_path, monkeypatch):
    """Question a: traces k0 (2 of 4 answers right), k1 (1 of 4), k2 (4 of 4 but unfinished: ineligible) -> weights
    2/3, 1/3, 0. Question b: no trace led to a right answer -> its teacher trace, weight 1. Three rows for two
    questions: every weight times 3/2 (mean row weight 1) -> 1, 1/2, 3/2."""
    cfg = load_config("smoke")
    cfg.posterior.mode, cfg.posterior.hint, cfg.posterior.num_generations = "forward_kl", "solution", 3
    run = RunDir(tmp_path / "run")
    (run.path / "models/initial").mkdir(parents=True)
    (run.path / "models/initial/config.json").write_text("{}")
    problems = [_problem("a", "5", "2+3=5"), _problem("b", "7", "3+4=7")]
    samples = [{"question_id": q, "k": k, "trace": f"{q} trace {k}", "finished": not (q == "a" and k == 2)}
               for q in "ab" for k in range(3)]
    right = {("a", 0): 2, ("a", 1): 1, ("a", 2): 4}
    rollouts = [{"question_id": q, "k": k, "m": m, "correct": m < right.get((q, k), 0)}
                for q in "ab" for k in range(3) for m in range(4)]

    monkeypatch.setattr("varreason.backends.open_engine", lambda *a, **k: contextlib.nullcontext(_FakeEngine()))
    def merged(rows_):  # as the sampling functions: rows merged into the artifact they are given
        return lambda cfg, run, *a, artifact, **k: (run.write_rows(artifact, rows_), rows_)[1]

    monkeypatch.setattr(variational, "sample_traces", merged(samples))
    monkeypatch.setattr(variational, "roll_out", merged(rollouts))
    train, counts = variational.forward_kl_rows(cfg, run, problems)

    t = Templates(cfg.format)
    expected = [(t.posterior_prompt("a=?", "2+3=5"), t.completion("a trace 0", "5"), 1.0),
                (t.posterior_prompt("a=?", "2+3=5"), t.completion("a trace 1", "5"), 0.5),
                (t.posterior_prompt("b=?", "3+4=7"), t.completion("teacher b", "7"), 1.5)]
    assert [(r["prompt"], r["completion"]) for r in train] == [e[:2] for e in expected]
    assert [r["weight"] for r in train] == pytest.approx([e[2] for e in expected])
    assert counts["phi_teacher_fallbacks"] == 1 and counts["phi_rows"] == 3
    saved = rows(run.path / "train/posterior.parquet")
    assert [r["source"] for r in saved] == ["pi", "pi", "fallback"]
    assert rows(run.path / "phi/rollouts.parquet") == rollouts


def test_solution_hint_needs_a_solution_on_every_problem():
    cfg = load_config("smoke")
    cfg.posterior.hint = "solution"
    check_hints(cfg, [_problem("a", "5", "2+3=5")], "train.parquet")
    with pytest.raises(InputError) as err:
        check_hints(cfg, [_problem("a", "5", "2+3=5"), _problem("b", "7")], "train.parquet")
    assert "row 1" in str(err.value) and "solution_column" in str(err.value)
    cfg.posterior.hint = "answer"
    check_hints(cfg, [_problem("b", "7")], "train.parquet")  # the answer hint needs no solution


def test_solution_hint_on_user_data_without_a_solution_column_is_one_line(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i}+1=?", "trace": "t", "answer": str(i + 1)})
                              for i in range(40)))
    code = main(["data", "--config", "smoke", "--output-dir", str(tmp_path / "run"), "--task.source", str(data),
                 "--posterior.hint", "solution"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no reference solution" in err and "Traceback" not in err
    assert not (tmp_path / "run/data/train.parquet").exists(), "nothing written"


def test_num_traces_beyond_k_is_refused(capsys):
    assert main(["config", "--config", "smoke", "--weights.num_traces", "9"]) == 2
    assert "num_traces" in capsys.readouterr().err


def test_sft_paper_halves_the_batch_where_it_can():
    """The paper presets run per-device batch 1 with accumulation 24 (192): sft-paper must halve the accumulation."""
    cfg = load_config("smoke").final
    cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps = 1, 24
    variational.halve_batch(cfg)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1, 12)
    cfg.per_device_train_batch_size = 32
    variational.halve_batch(cfg)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (16, 12)
    assert main(["config", "--config", "smoke", "--final.sft_paper", "true", "--final.per_device_train_batch_size",
                 "3", "--final.gradient_accumulation_steps", "3"]) == 2


def test_forward_kl_posterior_depends_on_the_sampling_settings():
    """q of forward_kl is trained on pi's samples and rollouts: changing them redoes it (teacher mode: it does not)."""
    from varreason.pipeline import STAGES

    cfg = load_config("smoke")
    base = STAGES["posterior"].config_hash(cfg)
    cfg.rollout.temperature = 0.9
    assert STAGES["posterior"].config_hash(cfg) == base
    cfg.posterior.mode = "forward_kl"
    changed = STAGES["posterior"].config_hash(cfg)
    cfg.rollout.temperature = 0.7
    assert STAGES["posterior"].config_hash(cfg) != changed


@pytest.mark.slow
def test_two_rounds_forward_kl_solution_hint_paper_baseline_and_scaled_batch(tmp_path):
    out = tmp_path / "run"
    args = ["--config", "smoke", "--output-dir", str(out), "--rounds", "2", "--posterior.mode", "forward_kl",
            "--posterior.hint", "solution", "--final.sft_paper", "true", "--build.mode", "weighted", "--build.mix",
            "false", "--build.weighted_batch", "scaled", "--weights.num_traces", "2"]
    assert main(["run", *args]) == 0
    cfg = load_config("smoke")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    # the solution hint is in q's prompts, in both phases
    solution = {p.id: p.meta["solution"] for p in load_problems(RunDir(out), "train")}
    phi = rows(out / "train/posterior.parquet")
    assert phi and all(solution[r["question_id"]] in r["prompt"] for r in phi)
    assert stages["posterior"]["counts"]["mode"] == "forward_kl"
    # the phi-phase samples pi for the questions the theta-phase samples q for (sample.num_questions of n_train)
    assert cfg.sample.num_questions < cfg.task.n_train
    assert stages["posterior"]["counts"]["phi_traces"] == cfg.sample.num_questions * cfg.posterior.num_generations
    sampled = {r["question_id"] for r in rows(out / "samples/posterior.parquet")}
    assert len(sampled) == cfg.sample.num_questions and {r["question_id"] for r in phi} <= sampled
    # K ablation: only the first 2 traces are weighted
    assert {r["k"] for r in rows(out / "weights.parquet")} == {0, 1}
    # the 1K recipe's batch: the final batch times K (2 here), sft-matched as set, sft-paper half of it
    batch = cfg.final.per_device_train_batch_size
    assert stages["final"]["counts"]["examples_per_step"] == 2 * batch
    assert stages["matched"]["counts"]["examples_per_step"] == batch
    assert stages["matched"]["counts"]["sft-paper_examples_per_step"] == batch // 2
    # round 2: its own folder on round 1's models, its model evaluated beside the others
    round2 = out / "rounds/2"
    # models/initial is pi0 in every folder; the round is given round 1's models as its starting checkpoints
    assert os.path.realpath(round2 / "models/initial") == os.path.realpath(out / "models/initial")
    assert not (round2 / "models/previous-posterior").exists()
    r2_manifest = json.loads((round2 / "manifest.json").read_text())
    starts = RunDir(round2).starts
    assert os.path.realpath(starts["policy"].path) == os.path.realpath(out / "models/final")
    assert os.path.realpath(starts["posterior"].path) == os.path.realpath(out / "models/posterior")
    assert starts["policy"].run_id == stages["final"]["run_id"] and starts["posterior"].run_id == stages["posterior"]["run_id"]
    r2 = r2_manifest["stages"]
    assert [s for s in r2 if "adopted_from" not in r2[s]] == list(ROUND_STAGES)
    assert r2["initial"]["run_id"] == stages["initial"]["run_id"]  # pi0's own entry, not a stand-in
    assert all(r2[s]["made_from"]["start:policy"] == stages["final"]["run_id"] for s in ROUND_STAGES)
    assert r2["posterior"]["counts"]["init"] == "previous-round-posterior" and r2["final"]["counts"]["optimizer_steps"] > 0
    assert stages["posterior"]["counts"]["init"] == "initial"
    summary = json.loads((out / "eval/summary.json").read_text())
    assert {"initial", "final", "sft-matched", "sft-paper", "final-round2"} <= set(summary)
    # a second call finds every stage of both rounds done
    before = (json.loads((out / "manifest.json").read_text()), json.loads((round2 / "manifest.json").read_text()))
    assert main(["run", *args]) == 0
    after = (json.loads((out / "manifest.json").read_text()), json.loads((round2 / "manifest.json").read_text()))
    for b, a in zip(before, after):
        assert {s: v["finished_at"] for s, v in b["stages"].items() if s != "eval"} == {
            s: v["finished_at"] for s, v in a["stages"].items() if s != "eval"}
