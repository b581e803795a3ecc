"""The stage graph: every stage's function, config sections, inputs and outputs in one table; skip-when-done; the
printed results.

    data -> base -> initial -> posterior -> sample -> score -> rollout -> weights -> build -> final -> matched -> eval

and the baselines, run alone (`varreason rft`, `varreason grpo`) or by `varreason compare`: rft (after `sample` with
`sample.proposal: prior`) and grpo (after `initial`).

A stage is skipped when the manifest holds it with the same hash of the config sections it (and everything
upstream) depends on and its outputs exist. `eval` always runs and skips, model by model, what it already did.

Several processes (`runs.Ranks`): a stage's `parallel` says how a process group shares it. "train": every rank
runs it and the HF Trainer makes it data-parallel; "split": every rank runs it and its sharded work (sampling,
scoring, rollouts, eval) is split across the ranks by chunk; "": rank 0 runs it while the others wait. Only rank 0
writes artifacts and the manifest; every stage ends with a barrier.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from varreason.config import RunConfig, dump_config
from varreason.report.run_report import write_report
from varreason.runs import SHARDED, Ranks, RunDir, ShardFinished
from varreason.stages import baselines, pi0, variational
from varreason.stages.eval import stage_eval

console = Console(stderr=True)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[RunConfig, RunDir], dict]
    sections: tuple[str, ...]  # config sections this stage (and everything upstream of it) depends on
    inputs: tuple[str, ...]  # artifacts it reads (recorded in the manifest)
    outputs: Callable[[RunConfig], list[str]]  # artifacts that must exist for it to count as done, for this config
    parallel: str = ""  # how a process group shares it: "train" | "split" | "" (rank 0 alone); see the docstring
    always: bool = False  # run every time (the stage caches its own work)
    engines: bool = True  # reads samples / scores made by a sampling engine (grpo samples with TRL: False)

    def config_hash(self, cfg: RunConfig) -> str:
        return cfg.section_hash(*self.sections, engines=self.engines)


PI0 = ("seed", "task", "format", "model", "initial")  # every stage after pi0 depends on these
SAMPLED = PI0 + ("posterior", "sample")


def _base_is_built(cfg: RunConfig) -> bool:
    """models/base is written by the base stage: a tiny model from scratch, or a GGUF checkpoint converted."""
    from varreason.models import is_gguf

    return not cfg.model.name_or_path or is_gguf(cfg.model.name_or_path)


def _rollout_outputs(cfg: RunConfig) -> list[str]:
    return (["scores/rollouts.parquet"] if cfg.rollout.num_generations else []) + (
        ["scores/prior_samples.parquet"] if cfg.rollout.prior_samples else [])


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("data", pi0.stage_data, ("seed", "task"), (),
          lambda c: ["data/train.parquet", "data/test.parquet"]),
    Stage("base", pi0.stage_base, ("seed", "task", "format", "model"), ("data/train.parquet",),
          lambda c: ["models/base/config.json"] if _base_is_built(c) else []),
    Stage("initial", pi0.stage_initial, PI0, ("data/train.parquet",),
          lambda c: ["models/initial/config.json"], "train"),
    Stage("posterior", variational.stage_posterior, PI0 + ("posterior",), ("data/train.parquet",),
          lambda c: [] if c.sample.proposal == "prior" else ["models/posterior/config.json"], "train"),
    Stage("sample", variational.stage_sample, SAMPLED, ("models/posterior",),
          lambda c: ["samples/posterior.parquet"], "split"),
    Stage("score", variational.stage_score, SAMPLED + ("score",),
          ("samples/posterior.parquet", "models/initial", "models/posterior"), lambda c: ["scores/scores.parquet"],
          "split"),
    Stage("rollout", variational.stage_rollout, SAMPLED + ("rollout",), ("samples/posterior.parquet", "models/initial"),
          _rollout_outputs, "split"),
    Stage("weights", variational.stage_weights, SAMPLED + ("score", "rollout", "weights"),
          ("scores/scores.parquet", "scores/rollouts.parquet", "samples/posterior.parquet"),
          lambda c: ["weights.parquet"]),
    Stage("build", variational.stage_build, SAMPLED + ("score", "rollout", "weights", "build"),
          ("weights.parquet", "samples/posterior.parquet"), lambda c: ["train/final.parquet"]),
    Stage("final", variational.stage_final, SAMPLED + ("score", "rollout", "weights", "build", "final"),
          ("train/final.parquet",), lambda c: [f"models/{c.final.name}/config.json"], "train"),
    Stage("matched", variational.stage_matched, PI0 + ("final",), ("data/train.parquet",),
          lambda c: ["models/sft-matched/config.json"] if c.final.sft_matched else [], "train"),
    Stage("rft", baselines.stage_rft, SAMPLED + ("final", "rft"), ("samples/posterior.parquet", "models/initial"),
          lambda c: [f"train/{c.rft.name}.parquet", f"models/{c.rft.name}/config.json"], "train"),
    Stage("grpo", baselines.stage_grpo, PI0 + ("sample", "grpo"), ("data/train.parquet", "models/initial"),
          lambda c: [f"models/{c.grpo.name}/config.json", f"grpo/{c.grpo.name}/rewards.parquet"], "train",
          engines=False),
    Stage("eval", stage_eval, ("seed", "task", "format", "eval"), ("models/*", "data/test.parquet"),
          lambda c: ["eval/summary.json"], "split", always=True),
]}
ORDER = [n for n in STAGES if n not in ("rft", "grpo")]  # `varreason run`; baselines run alone or via `compare`


def run_stage(name: str, cfg: RunConfig, run: RunDir, force: bool = False) -> dict:
    """Run one stage unless its artifact is complete for the same config (every rank of a group calls this)."""
    stage = STAGES[name]
    config_hash = stage.config_hash(cfg)
    outputs = stage.outputs(cfg)
    say = console.print if run.ranks.main else (lambda *a, **k: None)
    if not force and not stage.always and run.is_done(name, config_hash, outputs):
        say(f"[dim]- {name}: done for this config, skipped[/dim]")
        return run.manifest()["stages"][name]["counts"]
    say(f"[bold]- {name}[/bold]" + ("" if run.ranks.count == 1 else f" ({run.ranks})"))
    start = time.time()
    counts: dict = {}
    try:
        with run.running(config_hash):
            if stage.parallel or run.ranks.main:
                counts = stage.fn(cfg, run)
    except ShardFinished as done:  # a --shard job did its part: nothing merged, nothing recorded
        say(f"  {done}; `varreason {name}` without --shard merges the shards"
            + (" (and does the missing chunks)" if done.missing else ""))
        return {"missing": done.missing}
    run.ranks.wait()
    if run.ranks.main:
        run.record(name, config_hash, outputs, list(stage.inputs), counts, time.time() - start)
    run.ranks.wait()
    return counts if run.ranks.main else run.manifest()["stages"][name]["counts"]


def _check_engines_fit_ranks(cfg: RunConfig, stages_to_run: list[str], ranks: Ranks) -> None:
    """vLLM picks GPU 0 in every rank of a torchrun group: refuse it before any stage runs (shard jobs instead)."""
    from varreason.errors import InputError

    if ranks.count > 1 and ranks.group and any(cfg.backend_of(n) == "vllm" for n in stages_to_run if n in SHARDED):
        import torch

        if torch.cuda.is_available():
            raise InputError("backend vllm under torchrun on GPUs: every rank's engine would start on GPU 0; run "
                             "sample / score / rollout / eval as --shard jobs, one per GPU (docs/scale.md), or use "
                             "--backend hf", field="backend")


def run_all(cfg: RunConfig, stages_to_run: list[str] | None = None, force: bool = False,
            ranks: Ranks | None = None) -> dict:
    """The stages in order (default: ORDER) in this process's share (`ranks`: one process, a torchrun group, or
    a `--shard i/n` job, which does its part of one sharded stage and stops)."""
    from varreason.errors import InputError

    run = RunDir(cfg.output_dir, ranks)
    stages_to_run = stages_to_run or ORDER
    whole = not run.ranks.shard_job  # a shard job writes its chunks only: no config, report or results table
    if not whole and (len(stages_to_run) != 1 or stages_to_run[0] not in SHARDED):
        raise InputError(f"--shard works with one of the commands {', '.join(SHARDED)}; run the other stages "
                         "without it", field="shard")
    _check_engines_fit_ranks(cfg, stages_to_run, run.ranks)
    with run.lock():
        run.ranks.wait()  # no rank starts before rank 0 holds the folder
        if whole:
            run.write_text("config.yaml", dump_config(cfg))
        start = time.time()
        for name in stages_to_run:
            run_stage(name, cfg, run, force=force)
        wall = time.time() - start
        if whole and run.ranks.main and write_report(run):
            console.print(f"report: {run.path / 'report.md'}")
    if whole and run.ranks.main:
        print_results(run, wall)
    return {"wall_seconds": wall}


def print_results(run: RunDir, wall: float | None = None) -> None:
    """Accuracy of every evaluated model, overall and by difficulty, as a table on stdout."""
    path = run.path / "eval" / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    levels = sorted({d for m in summary.values() for d in m["by_difficulty"]}, key=lambda d: (len(d), d))
    table = Table(title=f"Held-out accuracy ({run.path})")
    table.add_column("model")
    table.add_column("overall (95% CI)", justify="right")
    for d in levels:
        table.add_column(f"d={d}", justify="right")
    for name, m in summary.items():
        cells = [f"{m['accuracy']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}]"]
        cells += [f"{m['by_difficulty'][d]['accuracy']:.1%}" if d in m["by_difficulty"] else "-" for d in levels]
        table.add_row(name, *cells)
    out = Console()
    out.print(table)
    tasks = sorted({t for m in summary.values() for t in m.get("by_task", {})})
    if len(tasks) > 1:
        for name, m in summary.items():
            out.print(f"{name} by task: " + ", ".join(f"{t} {m['by_task'][t]['accuracy']:.1%}" for t in tasks))
    if wall is not None:
        out.print(f"wall time: {wall:.1f} s")
