"""Several processes: a torchrun group (gloo on CPU) trains like one process with the whole batch (through the CLI
too, for every length-grouping, packing and accumulation setting) and runs the pipeline end to end; separate
`--shard i/n` jobs plus a merge give the artifacts of an unsharded run, row for row."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

from varreason.cli import main
from varreason.config import load_config
from varreason.runs import RunDir

pytestmark = pytest.mark.slow

ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), *args]
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


TRAIN_SCRIPT = """
import json, os, sys
from varreason.config import SFTConfig
from varreason.training import train_sft
base, data, out, batch, normalizer = sys.argv[1:6]
cfg = SFTConfig(learning_rate=1e-2, max_steps=4, per_device_train_batch_size=int(batch), logging_steps=1,
                save_steps=100, report_to=[], normalizer=normalizer, group_by_length=False, warmup_ratio=0.0)
stats = train_sft(base, json.load(open(data)), cfg, out, seed=0)
if os.environ.get("RANK", "0") == "0":
    json.dump(stats, open(out + ".json", "w"))
"""


@pytest.mark.parametrize("normalizer", ["constant", "tokens"])
def test_two_processes_with_batch_b_train_like_one_with_batch_2b(tmp_path, tiny_model_dir, normalizer):
    from conftest import toy_problems

    from varreason.config import FormatConfig
    from varreason.templates import Templates

    t = Templates(FormatConfig())
    data = [{"prompt": t.prompt(q), "completion": t.completion(z, y), "weight": 0.25 + (i % 4) / 2}
            for i, (q, z, y) in enumerate(toy_problems(64, seed=1))]
    (tmp_path / "rows.json").write_text(json.dumps(data))
    (tmp_path / "train.py").write_text(TRAIN_SCRIPT)
    common = [str(tiny_model_dir), str(tmp_path / "rows.json")]
    torchrun(2, str(tmp_path / "train.py"), *common, str(tmp_path / "two"), "4", normalizer, cwd=tmp_path)
    one = subprocess.run([sys.executable, str(tmp_path / "train.py"), *common, str(tmp_path / "one"), "8", normalizer],
                         cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False)
    assert one.returncode == 0, one.stderr[-4000:]

    two_stats, one_stats = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two_stats["examples_per_step"] == one_stats["examples_per_step"] == 8
    assert two_stats["optimizer_steps"] == one_stats["optimizer_steps"] == 4
    for (s2, l2), (s1, l1) in zip(two_stats["loss_history"], one_stats["loss_history"]):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=1e-4), (two_stats["loss_history"], one_stats["loss_history"])
    two, one_p = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    moved = max((one_p[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, "training changed the weights"
    for k in one_p:
        assert torch.allclose(two[k], one_p[k], atol=2e-5, rtol=1e-4), (k, (two[k] - one_p[k]).abs().max().item())


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory):
    """The smoke preset's data and base model, made once; each comparison below trains pi0 on copies of it."""
    folder = tmp_path_factory.mktemp("smoke") / "base"
    for stage in ("data", "base"):
        assert main([stage, "--config", "smoke", "--output-dir", str(folder)]) == 0
    return folder


def batch(per_device: int, accumulation: int = 1) -> list[str]:
    return ["--initial.per_device_train_batch_size", str(per_device),
            "--initial.gradient_accumulation_steps", str(accumulation)]


@pytest.mark.parametrize(("group_by_length", "padding_free", "two", "one"), [
    (True, False, batch(8), batch(16)),  # the defaults
    (True, True, batch(8), batch(16)),
    (False, False, batch(8), batch(16)),
    (False, True, batch(8), batch(16)),
    # 96 examples in steps of 20: the epoch's last step is filled up, and the 6 steps go into a second epoch
    (True, True, batch(5, accumulation=2), batch(20)),
], ids=["grouped", "grouped-packed", "random", "random-packed", "grouped-packed-accumulation"])
def test_torchrun_two_processes_train_pi0_like_one_with_the_global_batch_through_the_cli(
        tmp_path, smoke_base, group_by_length, padding_free, two, one):
    """The training order is built in global batches (`training.GlobalBatchSampler`), so the process count does not
    change which examples an optimiser step sees, whether or not rows are grouped by length or packed."""
    opts = ["--config", "smoke", "--initial.group_by_length", str(group_by_length).lower(),
            "--initial.padding_free", str(padding_free).lower()]
    for name in ("two", "one"):
        shutil.copytree(smoke_base, tmp_path / name)
    torchrun(2, "-m", "varreason", "initial", "--output-dir", str(tmp_path / "two"), *opts, *two, cwd=tmp_path)
    assert main(["initial", "--output-dir", str(tmp_path / "one"), *opts, *one]) == 0

    start = load_file(smoke_base / "models/base/model.safetensors")
    two_p, one_p = (load_file(tmp_path / name / "models/initial/model.safetensors") for name in ("two", "one"))
    assert max((one_p[k] - start[k]).abs().max().item() for k in start) > 1e-3, "training changed the weights"
    difference = max((two_p[k] - one_p[k]).abs().max().item() for k in one_p)
    assert difference < 1e-5, difference


SMALL = ["--eval.batch_size", "8"]  # 3 eval chunks of the 24 test problems, so every rank / shard has some


def test_torchrun_two_processes_run_the_smoke_pipeline_end_to_end(tmp_path):
    two = tmp_path / "two"
    torchrun(2, "-m", "varreason", "run", "--config", "smoke", "--output-dir", str(two), *SMALL, cwd=tmp_path)
    one = tmp_path / "one"
    assert main(["run", "--config", "smoke", "--output-dir", str(one), *SMALL]) == 0

    manifest = json.loads((two / "manifest.json").read_text())["stages"]
    assert {s: e["processes"] for s, e in manifest.items()} == {s: 2 for s in manifest}
    assert list(manifest) == list(json.loads((one / "manifest.json").read_text())["stages"])
    cfg = load_config("smoke", [("output_dir", str(two))])
    keys = Counter((r["question_id"], r["k"]) for r in rows(two / "samples/posterior.parquet"))
    assert max(keys.values()) == 1, "every (question, k) sampled once"
    assert set(keys) == {(r["question_id"], r["k"]) for r in rows(one / "samples/posterior.parquet")}
    assert len(keys) == cfg.sample.num_questions * cfg.sample.num_generations
    assert len(rows(two / "scores/rollouts.parquet")) == len(keys) * cfg.rollout.num_generations
    from varreason.stages.variational import recompute_weights_matches

    assert recompute_weights_matches(cfg, RunDir(two))
    for qid, n in Counter(r["question_id"] for r in rows(two / "weights.parquet")).items():
        assert n == cfg.sample.num_generations, qid
    summary = json.loads((two / "eval/summary.json").read_text())
    assert list(summary) == ["initial", "final", "sft-matched"] and all(m["n"] == 24 for m in summary.values())
    leftovers = [p for p in two.rglob("*") if ".shards-" in str(p) or ".tmp" in p.name or p.name.endswith(".work")]
    assert not leftovers


def test_shard_jobs_and_a_merge_give_the_unsharded_artifacts_row_for_row(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["run", "--config", "smoke", "--output-dir", str(whole), *SMALL]) == 0
    for stage in ("data", "base", "initial", "posterior"):
        assert main([stage, "--config", "smoke", "--output-dir", str(parts), *SMALL]) == 0
    for stage, rel in (("sample", "samples"), ("score", "scores"), ("rollout", "scores/rollouts")):
        for shard in ("0/2", "1/2"):
            assert main([stage, "--config", "smoke", "--output-dir", str(parts), *SMALL, "--shard", shard]) == 0
            assert stage not in json.loads((parts / "manifest.json").read_text())["stages"], "a shard records nothing"
        assert len(list((parts / rel).glob(".shards-*/part-*.parquet"))) == 3
        assert main([stage, "--config", "smoke", "--output-dir", str(parts), *SMALL]) == 0
    assert "merges the shards" in capsys.readouterr().err
    for rel in ("samples/posterior.parquet", "scores/scores.parquet", "scores/rollouts.parquet",
                "scores/prior_samples.parquet"):
        assert rows(parts / rel) == rows(whole / rel), rel
    for stage in ("weights", "build", "final", "matched"):
        assert main([stage, "--config", "smoke", "--output-dir", str(parts), *SMALL]) == 0
    assert rows(parts / "weights.parquet") == rows(whole / "weights.parquet")
    for shard in ("1/2", "0/2"):
        assert main(["eval", "--config", "smoke", "--output-dir", str(parts), *SMALL, "--shard", shard]) == 0
    assert not (parts / "eval" / "summary.json").exists()
    assert main(["eval", "--config", "smoke", "--output-dir", str(parts), *SMALL]) == 0
    for model in ("initial", "final", "sft-matched"):
        assert rows(parts / f"eval/{model}/samples.parquet") == rows(whole / f"eval/{model}/samples.parquet"), model
    assert json.loads((parts / "eval/summary.json").read_text()) == json.loads((whole / "eval/summary.json").read_text())


def test_shard_is_refused_where_it_has_no_meaning(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["sample", "--config", "smoke", "--output-dir", out, "--shard", "2/2"]) == 2
    assert "0 <= i < n" in capsys.readouterr().err
    assert main(["sample", "--config", "smoke", "--output-dir", out, "--shard", "half"]) == 2
    assert main(["run", "--config", "smoke", "--output-dir", out, "--shard", "0/2"]) == 2
    env = {**os.environ, "WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-m", "varreason", "sample", "--config", "smoke", "--output-dir", out,
                           "--shard", "0/2"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "already split" in done.stderr
    shutil.rmtree(out, ignore_errors=True)
