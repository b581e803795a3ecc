"""`varreason compare` on the smoke preset: every method trained from the same pi0 and evaluated the same way,
summary.json in the documented shape, shared stages adopted (not rerun), the bias diagnostic and the report."""

import json
import os

import pytest

from varreason.cli import main
from varreason.templates import Templates

pytestmark = pytest.mark.slow
METHODS = ["sft", "sft-matched", "variational", "sft-matched-flops", "no-hint", "rft", "star", "trice", "latro",
           "self-distill", "grpo", "grpo-debiased"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main(["compare", "--config", "smoke", "--output-dir", str(out)]) == 0
    return out


def test_summary_has_every_method_in_the_documented_shape(compared):
    summary = json.loads((compared / "summary.json").read_text())
    assert list(summary) == METHODS
    for name, m in summary.items():
        assert {"accuracy", "ci_low", "ci_high", "by_difficulty", "wall_seconds"} <= set(m), name
        assert 0.0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1.0
        assert m["n"] == 24 and set(m["by_difficulty"]) == {"1", "2", "3"}
        assert m["wall_seconds"] >= m["method_wall_seconds"] >= 0.0
    for name in METHODS:
        metrics = json.loads((compared / "methods" / name / "eval" / summary[name]["model"] / "metrics.json")
                             .read_text())
        assert metrics["accuracy"] == summary[name]["accuracy"]
        assert metrics["sampling"] == {"temperature": 0.0, "top_p": 1.0, "n": 1, "max_completion_length": 48}


def test_every_method_starts_from_the_same_pi0_and_data(compared):
    pi0 = os.path.realpath(compared / "methods/sft/models/initial")
    test = os.path.realpath(compared / "methods/sft/data/test.parquet")
    for name in METHODS[1:]:
        assert os.path.realpath(compared / "methods" / name / "models/initial") == pi0
        assert os.path.realpath(compared / "methods" / name / "data/test.parquet") == test
        manifest = json.loads((compared / "methods" / name / "manifest.json").read_text())["stages"]
        assert manifest["initial"]["adopted_from"].endswith("methods/sft")


def test_rft_and_no_hint_share_pi0s_samples_and_no_hint_has_ratio_one(compared):
    rft = os.path.realpath(compared / "methods/rft/samples/posterior.parquet")
    assert rft == os.path.realpath(compared / "methods/no-hint/samples/posterior.parquet")
    import pyarrow.parquet as pq

    weights = pq.read_table(compared / "methods/no-hint/weights.parquet").to_pylist()
    ratios = [w["log_ratio"] for w in weights if w["trace_tokens"] > 0]  # an empty trace has no ratio (None)
    assert ratios and all(r == 0.0 for r in ratios)  # q = pi0: the ratio is exactly 1
    assert not (compared / "methods/no-hint/models/posterior").exists()
    samples = pq.read_table(rft).to_pylist()
    kept = pq.read_table(compared / "methods/rft/train/rft.parquet").to_pylist()
    assert sum(r["source"] == "rft" for r in kept) == sum(s["correct"] and s["finished"] and s["trace"].strip() != ""
                                                          for s in samples)


def test_star_trains_on_verified_traces_without_the_hint(compared):
    """STaR's rows have pi0's plain prompt (the rationalization's hint removed) and only verified traces."""
    import pyarrow.parquet as pq

    from varreason.config import FormatConfig
    from varreason.models import load_tokenizer
    from varreason.stages.star import rationalize_prompt

    run = compared / "methods" / "star"
    templates = Templates(FormatConfig(), load_tokenizer(run / "models" / "initial"))
    questions = {r["id"]: r for r in pq.read_table(run / "data" / "train.parquet").to_pylist()}
    rows = pq.read_table(run / "train" / "star.parquet").to_pylist()
    counts = json.loads((run / "manifest.json").read_text())["stages"]["star"]["counts"]
    assert sum(r["source"].startswith("star-") for r in rows) == counts["kept_traces"]
    assert counts["rationalizer"] == "pi0"
    for r in rows:
        q = questions[r["question_id"]]
        assert r["prompt"] == templates.prompt(q["question"]), "a hint reached STaR's training rows"
        assert f"({q['answer']})" not in r["prompt"]
    rationalized = pq.read_table(run / "star" / "star" / "rationalized.parquet").to_pylist()
    assert counts["rationalizations_sampled"] == len(rationalized) == counts["questions"] - counts["solved_by_pi0"]
    samples = pq.read_table(run / "samples" / "posterior.parquet").to_pylist()
    assert len(samples) == counts["questions"]  # one near-greedy trace per question
    assert rationalize_prompt.__doc__  # the hinted prompt exists only at sampling time


def test_grpo_logged_every_reward_and_debiased_used_its_reward(compared):
    import pyarrow.parquet as pq

    for name, reward in (("grpo", "binary"), ("grpo-debiased", "debiased")):
        log = pq.read_table(compared / "methods" / name / "grpo" / name / "rewards.parquet").to_pylist()
        assert len(log) == 2 * 8  # max_steps 2 x 8 completions
        key = "grpo" if name == "grpo" else f"grpo:{name}"  # a model of another name has an entry of its own
        counts = json.loads((compared / "methods" / name / "manifest.json").read_text())["stages"][key]["counts"]
        assert counts["reward"] == reward and counts["optimizer_steps"] == 2
        if reward == "binary":
            assert all(r["reward"] == float(r["correct"]) for r in log)


def test_bias_diagnostic_and_report(compared):
    curves = json.loads((compared / "bias.json").read_text())
    assert set(curves) == {"variational", "no-hint", "rft", "star", "trice", "grpo", "grpo-debiased"}
    assert curves["grpo"]["formula"] == "grpo" and curves["rft"]["formula"] == "rft"
    assert curves["grpo-debiased"]["formula"] == "variational"
    for c in curves.values():
        assert sum(b["n"] for b in c["bins"]) == c["points"]
    report = (compared / "report.md").read_text()
    for name in METHODS:
        assert f"| {name} |" in report
    for plot in ("accuracy.png", "accuracy_by_difficulty.png", "accuracy_flops.png", "bias.png"):
        assert (compared / "plots" / plot).stat().st_size > 1000


def test_every_method_has_its_compute_account(compared):
    """Tokens and FLOPs of each method's own stages; pi0's shared ones apart; sft-matched-flops trained with the
    FLOPs variational spent, to within one optimiser step."""
    summary = json.loads((compared / "summary.json").read_text())
    assert summary["sft"]["compute"]["flops"]["total"] == 0.0  # pi0 itself: nothing of its own
    for name in METHODS[1:]:
        c = summary[name]["compute"]
        assert c["trained"] > 0 and c["flops"]["trained"] > 0, name
        assert summary[name]["pi0_compute"] == summary["sft"]["pi0_compute"], name  # the same pi0, counted once
    for name in ("variational", "no-hint", "rft", "star", "trice", "latro", "self-distill", "grpo"):
        assert summary[name]["compute"]["generated"] > 0, name  # they sample
    for name in ("variational", "no-hint", "latro", "self-distill"):
        assert summary[name]["compute"]["scored"] > 0, name  # importance weights, a reward, a teacher
    assert summary["sft-matched"]["compute"]["generated"] == 0
    target = summary["variational"]["compute"]["flops"]["total"]
    matched = json.loads((compared / "methods/sft-matched-flops/manifest.json").read_text())["stages"]["matched"]
    per_step = matched["counts"]["compute"]["flops"]["trained"] / matched["counts"]["optimizer_steps"]
    assert abs(summary["sft-matched-flops"]["compute"]["flops"]["total"] - target) <= per_step
    assert matched["counts"]["optimizer_steps"] > json.loads(
        (compared / "methods/sft-matched/manifest.json").read_text())["stages"]["matched"]["counts"]["optimizer_steps"]


def test_a_second_compare_redoes_nothing(compared, capsys):
    before = {n: json.loads((compared / "methods" / n / "manifest.json").read_text()) for n in METHODS}
    assert main(["compare", "--config", "smoke", "--output-dir", str(compared)]) == 0
    after = {n: json.loads((compared / "methods" / n / "manifest.json").read_text()) for n in METHODS}
    assert before == after


def test_bad_method_is_one_line_exit_2(tmp_path, capsys):
    code = main(["compare", "--config", "smoke", "--output-dir", str(tmp_path / "x"), "--compare.methods", "[sft, rtf]"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'rtf'" in err and "did you mean 'rft'" in err and len(err.splitlines()) == 1
