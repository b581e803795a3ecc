"""A finished run is never replaced silently; a stage counts as done only when made from the very artifacts it reads;
a kill between an artifact and the removal of its shards leaves nothing behind (issue 23's findings 1, 2 and 5, each
with the finding's own command)."""

import json

import pytest

from varreason.cli import main
from varreason.pipeline import work_key


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["stages"]


def _snapshot(out) -> dict:
    """Every file of the folder but the lock, with its bytes (what `nothing changed` compares)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "smoke"
    assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.mark.slow
def test_a_command_without_config_on_a_finished_folder_uses_its_config(smoke_run, tmp_path, capsys):
    out = _copy(smoke_run, tmp_path / "run")
    before = _snapshot(out)
    assert main(["final", "--output-dir", str(out)]) == 0  # was: the demo preset, 250 steps over the smoke model
    assert "using the folder's config" in capsys.readouterr().err
    after = _snapshot(out)
    for changed in ("manifest.json", "report.md", "config.yaml"):  # eval's entry, the folder's new name and path
        after.pop(changed), before.pop(changed)
    assert after == before  # final skipped: no model, table or eval result changed
    config = (out / "config.yaml").read_text().replace(str(out), str(smoke_run))
    assert config == (smoke_run / "config.yaml").read_text()  # smoke's config, not demo's
    assert _manifest(out)["final"]["finished_at"] == _manifest(smoke_run)["final"]["finished_at"]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["run", "--config", "demo"], ["final", "--config", "demo"],
                                  ["run", "--config", "smoke", "--task.n_train", "64"],
                                  ["initial", "--initial.learning_rate", "0.5"]])
def test_a_command_that_would_replace_finished_artifacts_is_refused_before_any_work(smoke_run, tmp_path, capsys,
                                                                                   argv):
    out = _copy(smoke_run, tmp_path / "run")
    before = _snapshot(out)
    assert main([*argv, "--output-dir", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("varreason: error")]
    assert len(err) == 1 and "would replace artifacts made with other settings" in err[0] and "--overwrite" in err[0]
    assert _snapshot(out) == before
    if argv[0] == "initial":
        assert "models/initial (initial.learning_rate 0.003 -> 0.5)" in err[0]


@pytest.mark.slow
def test_overwrite_replaces_and_the_folder_config_follows(smoke_run, tmp_path):
    out = _copy(smoke_run, tmp_path / "run")
    assert main(["initial", "--output-dir", str(out), "--initial.max_steps", "2", "--overwrite"]) == 0
    assert _manifest(out)["initial"]["counts"]["optimizer_steps"] == 2
    assert "max_steps: 2" in (out / "config.yaml").read_text()


def test_an_empty_output_dir_is_refused(capsys):
    assert main(["run", "--config", "smoke", "--output-dir", ""]) == 2
    assert "output_dir" in capsys.readouterr().err


@pytest.mark.slow
def test_a_variant_with_its_own_name_only_adds(smoke_run, tmp_path, capsys):
    out = _copy(smoke_run, tmp_path / "run")
    final = (out / "models/final/model.safetensors").read_bytes()
    config = (out / "config.yaml").read_text()
    assert main(["final", "--output-dir", str(out), "--final.name", "v2", "--final.learning_rate", "1e-3"]) == 0
    assert (out / "models/v2/config.json").exists()
    assert (out / "models/final/model.safetensors").read_bytes() == final
    stages = _manifest(out)
    assert stages["final:v2"]["settings"]["final"]["learning_rate"] == 1e-3
    assert stages["final"] == _manifest(smoke_run)["final"]
    # sft-matched was made with the folder's final settings: config.yaml keeps describing the folder
    assert (out / "config.yaml").read_text() == config
    assert main(["eval", "--output-dir", str(out)]) == 0
    assert "v2" in json.loads((out / "eval/summary.json").read_text())


@pytest.mark.slow
def test_a_stage_is_redone_when_its_input_was_made_anew(smoke_run, tmp_path, capsys):
    out = _copy(smoke_run, tmp_path / "run")
    assert main(["weights", "--output-dir", str(out), "--weights.estimator", "likelihood"]) == 2  # finding 2, refused
    assert main(["weights", "--output-dir", str(out), "--weights.estimator", "likelihood", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["build", "--output-dir", str(out)]) == 0  # was: "done for this config, skipped"
    assert "build: done" not in capsys.readouterr().err
    stages = _manifest(out)
    assert stages["build"]["made_from"]["weights"] == stages["weights"]["run_id"]
    assert stages["build"]["settings"]["weights"]["estimator"] == "likelihood"
    assert "estimator: likelihood" in (out / "config.yaml").read_text()
    # the final model is made from the old training set: the report says so until it is retrained
    assert main(["eval", "--output-dir", str(out)]) == 0
    assert "Stale" in (out / "report.md").read_text()
    assert main(["final", "--output-dir", str(out)]) == 0
    assert _manifest(out)["final"]["made_from"]["build"] == stages["build"]["run_id"]
    assert main(["eval", "--output-dir", str(out)]) == 0
    assert "Stale" not in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_same_settings_redo_upstream_makes_the_downstream_stage_run_again(smoke_run, tmp_path, capsys):
    out = _copy(smoke_run, tmp_path / "run")
    assert main(["weights", "--config", "smoke", "--output-dir", str(out), "--force"]) == 0
    capsys.readouterr()
    assert main(["build", "--config", "smoke", "--output-dir", str(out)]) == 0  # was: skipped, on its settings alone
    assert "build: done" not in capsys.readouterr().err


@pytest.mark.slow
def test_shards_left_by_a_kill_after_the_artifact_are_removed_on_the_rerun(smoke_run, tmp_path):
    """Finding 5: a kill after eval/<model>/metrics.json (or a stage's artifact) and before its shards are dropped."""
    out = _copy(smoke_run, tmp_path / "run")
    fingerprint = json.loads((out / "eval/initial/metrics.json").read_text())["fingerprint"]
    sample = _manifest(out)["sample"]
    sample_key = work_key(sample["config_hash"], sample["made_from"])
    for folder in (out / "eval/initial" / f".shards-{fingerprint}", out / "samples" / f".shards-{sample_key}"):
        folder.mkdir()
        (folder / "part-00000.parquet").write_bytes(b"left by a kill")
    assert main(["run", "--output-dir", str(out)]) == 0
    assert [p for p in out.rglob(".shards-*")] == []


def _stages_started(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("- ")]


@pytest.mark.parametrize("case", ["data", "model", "long row"])
def test_bad_input_is_refused_before_the_first_stage(tmp_path, capsys, tiny_model_dir, case):
    """Finding 7: a data error came after `- data` started, a model path after `- base`, an over-long row after
    `- initial`."""
    argv = ["run", "--config", "smoke", "--output-dir", str(tmp_path / "run")]
    if case == "data":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "1+1?", "trace": "1+1=2", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
        argv += ["--task.source", str(bad)]
    elif case == "model":
        argv += ["--model.name_or_path", str(tmp_path / "no-such-model")]
    else:
        argv += ["--model.name_or_path", str(tiny_model_dir), "--initial.max_length", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert _stages_started(err) == [], err
    assert len([line for line in err.splitlines() if line.startswith("varreason: error")]) == 1
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.slow
def test_skipping_the_rollouts_that_gml_does_not_read_changes_no_number(smoke_run, tmp_path):
    """Finding 8: the demo skips its rollouts (the GML estimator reads none); the weights, the training set and the
    evaluated accuracies must be those of the run that made them."""
    import pyarrow.parquet as pq

    out = tmp_path / "no-rollouts"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--rollout.num_generations", "0",
                 "--rollout.prior_samples", "0"]) == 0
    assert not (out / "scores/rollouts.parquet").exists()
    with_rollouts = pq.read_table(smoke_run / "weights.parquet").to_pylist()
    without = pq.read_table(out / "weights.parquet").to_pylist()
    assert [r["log_rho"] for r in without] == [r["log_rho"] for r in with_rollouts]
    assert pq.read_table(out / "train/final.parquet").equals(pq.read_table(smoke_run / "train/final.parquet"))
    assert json.loads((out / "eval/summary.json").read_text()) == json.loads((smoke_run / "eval/summary.json").read_text())


@pytest.mark.slow
def test_shards_made_from_an_earlier_pi0_are_not_merged(smoke_run, tmp_path):
    """A kill mid-sample, then pi0 retrained with the same settings: the sample shards of the old pi0 must not be
    reused (they were keyed by the settings alone)."""
    import pyarrow.parquet as pq

    out = _copy(smoke_run, tmp_path / "run")
    sample = _manifest(out)["sample"]
    old_key = work_key(sample["config_hash"], sample["made_from"])
    assert main(["initial", "--output-dir", str(out), "--force"]) == 0
    (out / "samples/posterior.parquet").unlink()  # as if the kill came before the merged artifact
    stale = out / "samples" / f".shards-{old_key}"
    stale.mkdir()
    for i in range(8):  # every chunk "done" by the old pi0: a reuse would read these instead of sampling
        pq.write_table(pq.read_table(smoke_run / "samples/posterior.parquet").slice(0, 1), stale / f"part-{i:05d}.parquet")
    assert main(["sample", "--output-dir", str(out)]) == 0
    rows = pq.read_table(out / "samples/posterior.parquet").num_rows
    assert rows == pq.read_table(smoke_run / "samples/posterior.parquet").num_rows and rows > 8
