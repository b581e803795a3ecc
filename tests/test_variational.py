"""The variational pipeline on the smoke preset: invariants of the artifacts, weights recomputed independently from
the scores, the build modes, and resume of an interrupted sampling stage."""

import json
import math
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from varreason.cli import main
from varreason.config import load_config
from varreason.runs import RunDir

pytestmark = pytest.mark.slow


def rows(path):
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("variational") / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
    return out


def test_every_stage_ran_and_wrote_its_artifact(smoke_run):
    manifest = json.loads((smoke_run / "manifest.json").read_text())["stages"]
    assert list(manifest) == ["data", "base", "initial", "posterior", "sample", "score", "rollout", "weights",
                              "build", "final", "matched", "eval"]
    for rel in ("models/posterior/config.json", "samples/posterior.parquet", "scores/scores.parquet",
                "scores/rollouts.parquet", "scores/prior_samples.parquet", "weights.parquet", "train/final.parquet",
                "models/final/config.json", "models/sft-matched/config.json", "report.md"):
        assert (smoke_run / rel).exists(), rel
    assert not list((smoke_run / "samples").glob(".shards-*")), "shards are removed once the artifact is merged"
    summary = json.loads((smoke_run / "eval/summary.json").read_text())
    assert list(summary) == ["initial", "final", "sft-matched"]
    for m in summary.values():
        assert m["ci_low"] <= m["accuracy"] <= m["ci_high"] and m["by_difficulty"]


def test_k_traces_per_question_and_rho_tilde_sums_to_one(smoke_run):
    cfg = load_config("smoke")
    weights = rows(smoke_run / "weights.parquet")
    by_q = defaultdict(list)
    for r in weights:
        by_q[r["question_id"]].append(r)
    assert len(by_q) == cfg.sample.num_questions
    for qid, group in by_q.items():
        assert sorted(r["k"] for r in group) == list(range(cfg.sample.num_generations)), qid
        total = sum(r["rho_tilde"] for r in group)
        if group[0]["fallback"]:
            assert total == 0.0 and not any(r["eligible"] for r in group)
        else:
            assert total == pytest.approx(1.0, abs=1e-12)
            assert sum(r["best"] for r in group) == 1
    samples = rows(smoke_run / "samples/posterior.parquet")
    assert len(samples) == len(weights)
    rollouts = rows(smoke_run / "scores/rollouts.parquet")
    assert len(rollouts) == len(samples) * cfg.rollout.num_generations


def test_weights_recomputed_from_scores_equal_the_artifact(smoke_run):
    """A second, independent computation in plain Python (no varreason.objectives) from scores + samples."""
    cfg = load_config("smoke")
    scores = {(r["question_id"], r["k"]): r for r in rows(smoke_run / "scores/scores.parquet")}
    finished = {(r["question_id"], r["k"]): r["finished"] for r in rows(smoke_run / "samples/posterior.parquet")}
    weights = rows(smoke_run / "weights.parquet")
    log_rho = {}
    for key, s in scores.items():
        n = min(len(s["prior_logps"]), len(s["posterior_logps"]))
        assert n == s["trace_tokens"] == len(s["prior_logps"]) == len(s["posterior_logps"])
        if n == 0 or not s["answer_logps"] or not finished[key]:
            log_rho[key] = -math.inf
            continue
        ratio = sum(a - b for a, b in zip(s["prior_logps"], s["posterior_logps"])) / n
        log_rho[key] = ratio + sum(s["answer_logps"]) / len(s["answer_logps"])
    by_q = defaultdict(list)
    for key in log_rho:
        by_q[key[0]].append(key)
    for r in weights:
        key = (r["question_id"], r["k"])
        assert r["log_rho"] == pytest.approx(log_rho[key], abs=1e-9) or r["log_rho"] == log_rho[key] == -math.inf
        finite = [log_rho[k] for k in by_q[key[0]] if math.isfinite(log_rho[k])]
        if not finite:
            assert r["rho_tilde"] == 0.0
            continue
        top = max(finite)
        z = sum(math.exp(v - top) for v in finite)
        expected = math.exp(log_rho[key] - top) / z if math.isfinite(log_rho[key]) else 0.0
        assert r["rho_tilde"] == pytest.approx(expected, abs=1e-12)
        ess = 1.0 / sum((math.exp(v - top) / z) ** 2 for v in finite)
        assert r["ess"] == pytest.approx(ess, rel=1e-9)
    from varreason.stages.variational import recompute_weights_matches

    assert recompute_weights_matches(cfg, RunDir(smoke_run))
    assert cfg.weights.estimator == "gml" and cfg.weights.ratio == "geometric"


def test_best_mix_build_has_one_row_per_question_plus_teacher(smoke_run):
    built = rows(smoke_run / "train/final.parquet")
    weights = rows(smoke_run / "weights.parquet")
    questions = {r["question_id"] for r in weights}
    fallbacks = {r["question_id"] for r in weights if r["fallback"]}
    assert {"prompt", "completion", "weight", "source"} <= set(built[0])
    train = rows(smoke_run / "data/train.parquet")
    assert sum(r["source"] == "teacher" for r in built) == len(train), "mix: the teacher data of every question"
    assert sum(r["source"] == "fallback" for r in built) == len(fallbacks)
    assert sum(r["source"] == "posterior" for r in built) == len(questions) - len(fallbacks)
    manifest = json.loads((smoke_run / "manifest.json").read_text())["stages"]
    assert manifest["build"]["counts"]["fallbacks"] == len(fallbacks) == manifest["weights"]["counts"]["fallbacks"]
    best = {(r["question_id"], r["k"]) for r in weights if r["best"]}
    assert {(r["question_id"], r["k"]) for r in built if r["source"] == "posterior"} == best
    assert all("<think>" in r["prompt"] and "Correct answer" not in r["prompt"] for r in built), "no hint for pi"
    # final and sft-matched: same init, steps and batch; pi0's steps when final.max_steps is -1
    assert manifest["final"]["counts"]["optimizer_steps"] == manifest["matched"]["counts"]["optimizer_steps"]
    assert manifest["final"]["counts"]["examples_per_step"] == manifest["matched"]["counts"]["examples_per_step"]


def test_weighted_build_is_proportional_to_rho_tilde(smoke_run, tmp_path):
    import shutil

    out = tmp_path / "w"
    shutil.copytree(smoke_run, out)
    assert main(["build", "--config", "smoke", "--output-dir", str(out), "--build.mode", "weighted",
                 "--build.mix", "false", "--overwrite"]) == 0  # replaces the best-mode training set
    built = [r for r in rows(out / "train/final.parquet") if r["source"] == "posterior"]
    weights = {(r["question_id"], r["k"]): r for r in rows(out / "weights.parquet")}
    assert built and len(built) == sum(1 for w in weights.values() if w["rho_tilde"] > 0)
    scale = {r["weight"] / weights[(r["question_id"], r["k"])]["rho_tilde"] for r in built}
    assert max(scale) == pytest.approx(min(scale)), "one constant scale: weights proportional to rho~"
    everything = rows(out / "train/final.parquet")
    assert sum(r["weight"] for r in everything) == pytest.approx(len(everything)), "mean row weight 1"


def test_interrupted_sampling_resumes_from_its_shards(smoke_run, tmp_path, monkeypatch):
    import shutil

    from varreason.backends import hf

    out = tmp_path / "r"
    shutil.copytree(smoke_run, out)
    reference = rows(smoke_run / "samples/posterior.parquet")
    real = hf.HFGenerator.generate
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hf.HFGenerator, "generate", flaky)
    assert main(["sample", "--config", "smoke", "--output-dir", str(out), "--force"]) == 130
    shards = list((out / "samples").glob(".shards-*/part-*.parquet"))
    assert len(shards) == 1, "the first chunk was saved before the interruption"
    monkeypatch.setattr(hf.HFGenerator, "generate", real)
    calls["n"] = 0
    assert main(["sample", "--config", "smoke", "--output-dir", str(out), "--force"]) == 0
    assert rows(out / "samples/posterior.parquet") == reference, "resumed run equals the uninterrupted one"


def test_accuracy_estimator_without_rollouts_is_one_line(tmp_path, capsys):
    code = main(["config", "--config", "smoke", "--weights.estimator", "accuracy", "--rollout.num_generations", "0"])
    assert code == 2
    assert "needs rollouts" in capsys.readouterr().err


def test_a_summary_entry_lost_to_a_kill_is_restored_without_a_new_evaluation(smoke_run):
    """A kill between eval/<model>/metrics.json and eval/summary.json: the rerun finds the stored metrics (same
    weights, same settings) and must still put the model back in the summary, in the usual order."""
    path = smoke_run / "eval/summary.json"
    full = json.loads(path.read_text())
    samples = (smoke_run / "eval/initial/samples.parquet").stat().st_mtime_ns
    path.write_text(json.dumps({k: v for k, v in full.items() if k != "initial"}))
    assert main(["eval", "--config", "smoke", "--output-dir", str(smoke_run)]) == 0
    restored = json.loads(path.read_text())
    assert restored == full and list(restored) == ["initial", "final", "sft-matched"]
    assert (smoke_run / "eval/initial/samples.parquet").stat().st_mtime_ns == samples, "not evaluated again"
