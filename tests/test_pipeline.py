"""The real pipeline on the smoke preset: artifacts, manifest, skip-when-done (the variational stages in detail:
test_variational.py)."""

import json

import pyarrow.parquet as pq
import pytest

from varreason.cli import main


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
    for rel in ("config.yaml", "manifest.json", "data/train.parquet", "data/test.parquet",
                "models/base/config.json", "models/initial/model.safetensors", "models/initial/tokenizer.json",
                "eval/initial/samples.parquet", "eval/initial/metrics.json", "eval/summary.json", "report.md",
                "plots/accuracy_by_difficulty.png", "plots/loss_initial.png"):
        assert (out / rel).exists(), rel
    train = pq.read_table(out / "data/train.parquet").to_pylist()
    test = pq.read_table(out / "data/test.parquet").to_pylist()
    assert {r["question"] for r in train}.isdisjoint({r["question"] for r in test})
    assert {"question", "answer", "trace", "task", "difficulty"} <= set(train[0])

    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    assert list(manifest)[:3] == ["data", "base", "initial"] and list(manifest)[-1] == "eval"
    assert manifest["initial"]["counts"]["optimizer_steps"] == 6
    assert manifest["eval"]["versions"]["torch"]

    summary = json.loads((out / "eval/summary.json").read_text())
    m = summary["initial"]
    assert set(m) >= {"accuracy", "ci_low", "ci_high", "by_difficulty"}
    assert m["ci_low"] <= m["accuracy"] <= m["ci_high"] and m["n"] == len(test)
    samples = pq.read_table(out / "eval/initial/samples.parquet").to_pylist()
    assert len(samples) == len(test)
    assert "Held-out accuracy" in capsys.readouterr().out

    # a second run with the same config skips every stage; a changed eval setting is refused without --overwrite,
    # and with it redoes only eval
    assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
    again = json.loads((out / "manifest.json").read_text())["stages"]
    assert all(again[s]["finished_at"] == manifest[s]["finished_at"] for s in manifest if s != "eval")
    assert again["eval"]["counts"] == manifest["eval"]["counts"]  # eval always runs, but evaluates nothing new
    assert main(["eval", "--output-dir", str(out), "--eval.max_completion_length", "8"]) == 2
    assert "eval.max_completion_length 48 -> 8" in capsys.readouterr().err
    assert main(["eval", "--output-dir", str(out), "--eval.max_completion_length", "8", "--overwrite"]) == 0
    third = json.loads((out / "manifest.json").read_text())["stages"]
    assert third["initial"]["finished_at"] == manifest["initial"]["finished_at"]
    assert third["eval"]["config_hash"] != manifest["eval"]["config_hash"]
    redone = json.loads((out / "eval/initial/metrics.json").read_text())
    assert redone["sampling"]["max_completion_length"] == 8


def test_user_data_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "trace": "1+1=2", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n')
    code = main(["data", "--config", "smoke", "--output-dir", str(tmp_path / "r"), "--task.source", str(bad)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("varreason: error:")
    assert "bad.jsonl, line 2, field 'trace'" in errors[0]


def test_user_data_run_builds_disjoint_splits(tmp_path):
    src = tmp_path / "mine.jsonl"
    rows = [{"question": f"What is {i}+{i}?", "trace": f"{i}+{i}={2 * i}", "answer": str(2 * i)} for i in range(60)]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "r"
    assert main(["data", "--config", "smoke", "--output-dir", str(out), "--task.source", str(src),
                 "--task.test_fraction", "0.25"]) == 0
    train = pq.read_table(out / "data/train.parquet").to_pylist()
    test = pq.read_table(out / "data/test.parquet").to_pylist()
    assert len(train) + len(test) == 60 and test
    assert {r["question"] for r in train}.isdisjoint({r["question"] for r in test})
