"""kill -9 at moments spread over a smoke run, then the same command again: every artifact equals an uninterrupted
run's (data, samples, scores, weights and training sets row for row; the models evaluate the same)."""

import json
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from varreason.cli import main

TABLES = ("data/train.parquet", "data/test.parquet", "samples/posterior.parquet", "scores/scores.parquet",
          "scores/rollouts.parquet", "scores/prior_samples.parquet", "weights.parquet", "train/final.parquet",
          "eval/initial/samples.parquet", "eval/final/samples.parquet", "eval/sft-matched/samples.parquet")


def _run_and_kill(out, when, timeout_s: float = 120.0, extra: tuple[str, ...] = ()) -> bool:
    """Start `varreason run --config smoke` in a new process and SIGKILL it as soon as `when(out)` holds (polled every
    10 ms); True if it was killed before it finished."""
    proc = subprocess.Popen([sys.executable, "-m", "varreason", "run", "--config", "smoke", "--output-dir", str(out),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not when(out):
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _stages_done(out) -> list[str]:
    try:
        return list(json.loads((out / "manifest.json").read_text())["stages"])
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _shards(out, folder: str) -> int:
    return len(list((out / folder).glob(".shards-*/part-*.parquet")))


KILL_POINTS = {  # name -> the moment to kill at
    "pi0 training, after its first checkpoint": lambda out: any((out / "models/initial.work").glob("checkpoint-*")),
    "sample, after its first shard": lambda out: _shards(out, "samples") >= 1,
    "rollout, after its first shard": lambda out: _shards(out, "scores/rollouts") >= 1,
    "between stages, after build": lambda out: "build" in _stages_done(out),
    "final training, once started": lambda out: (out / "models/final.work").exists(),
    "eval, once started": lambda out: (out / "eval").exists(),
}


@pytest.mark.slow
def test_kill_at_several_moments_then_resume_gives_the_same_artifacts(tmp_path):
    reference = tmp_path / "reference"
    assert main(["run", "--config", "smoke", "--output-dir", str(reference)]) == 0
    killed = []
    for i, (name, when) in enumerate(KILL_POINTS.items()):
        out = tmp_path / f"killed{i}"
        if _run_and_kill(out, when):
            killed.append(name)
        assert main(["run", "--config", "smoke", "--output-dir", str(out)]) == 0
        for rel in TABLES:
            assert pq.read_table(out / rel).equals(pq.read_table(reference / rel)), (name, rel)
        summary = json.loads((out / "eval/summary.json").read_text())
        assert summary == json.loads((reference / "eval/summary.json").read_text()), name
        leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".shards-")]
        assert leftovers == [], name
    print("killed at:", killed)
    assert len(killed) >= 4, killed  # a point can be missed only when the stage is faster than the 10 ms poll


ROUND_TABLES = ("samples/posterior.parquet", "scores/scores.parquet", "scores/rollouts.parquet", "weights.parquet",
                "train/final.parquet")


@pytest.mark.slow
def test_a_run_killed_in_round_two_resumes_to_the_same_artifacts(tmp_path):
    rounds = ("--rounds", "2")
    reference = tmp_path / "reference"
    assert main(["run", "--config", "smoke", "--output-dir", str(reference), *rounds]) == 0
    out = tmp_path / "killed"
    killed = _run_and_kill(out, lambda o: _shards(o, "rounds/2/samples") >= 1, timeout_s=600, extra=rounds)
    assert killed, "the run finished before round 2's first sample shard was seen"
    assert (out / "rounds/2/samples").exists() and not (out / "rounds/2/samples/posterior.parquet").exists()
    assert main(["run", "--config", "smoke", "--output-dir", str(out), *rounds]) == 0
    for rel in ROUND_TABLES:
        assert pq.read_table(out / "rounds/2" / rel).equals(pq.read_table(reference / "rounds/2" / rel)), rel
    assert pq.read_table(out / "eval/final-round2/samples.parquet").equals(
        pq.read_table(reference / "eval/final-round2/samples.parquet"))
    summary = json.loads((out / "eval/summary.json").read_text())
    assert summary == json.loads((reference / "eval/summary.json").read_text())
    assert "final-round2" in summary
