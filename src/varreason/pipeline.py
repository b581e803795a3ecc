"""The stage graph: which stages exist, what each depends on, skip-when-done, and the printed results.

    data -> base -> initial -> posterior -> sample -> score -> rollout -> weights -> build -> final -> matched -> eval

and the baselines, run alone (`varreason rft`, `varreason grpo`) or by `varreason compare`: rft (after `sample` with
`sample.proposal: prior`) and grpo (after `initial`).

A stage is skipped when the manifest holds it with the same hash of the config sections it (and everything
upstream) depends on and its outputs exist. `eval` always runs and skips, model by model, what it already did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from varreason import stages, variational
from varreason.baselines import grpo, rft
from varreason.config import RunConfig, dump_config
from varreason.runs import RunDir
from varreason.variational import UPSTREAM

console = Console(stderr=True)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[RunConfig, RunDir], dict]
    sections: tuple[str, ...]  # config sections this stage (and everything upstream of it) depends on
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    always: bool = False  # run every time (the stage caches its own work)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", stages.stage_data, ("seed", "task"), (), ("data/train.parquet", "data/test.parquet")),
        Stage("base", stages.stage_base, ("seed", "task", "format", "model"), ("data/train.parquet",), ()),
        Stage("initial", stages.stage_initial, ("seed", "task", "format", "model", "initial"),
              ("data/train.parquet",), ("models/initial/config.json",)),
        Stage("posterior", variational.stage_posterior, UPSTREAM["posterior"], ("data/train.parquet",),
              ("models/posterior/config.json",)),
        Stage("sample", variational.stage_sample, UPSTREAM["sample"], ("models/posterior",),
              ("samples/posterior.parquet",)),
        Stage("score", variational.stage_score, UPSTREAM["score"],
              ("samples/posterior.parquet", "models/initial", "models/posterior"), ("scores/scores.parquet",)),
        Stage("rollout", variational.stage_rollout, UPSTREAM["rollout"], ("samples/posterior.parquet", "models/initial"),
              ()),
        Stage("weights", variational.stage_weights, UPSTREAM["weights"],
              ("scores/scores.parquet", "scores/rollouts.parquet", "samples/posterior.parquet"), ("weights.parquet",)),
        Stage("build", variational.stage_build, UPSTREAM["build"], ("weights.parquet", "samples/posterior.parquet"),
              ("train/final.parquet",)),
        Stage("final", variational.stage_final, UPSTREAM["final"], ("train/final.parquet",), ()),
        Stage("matched", variational.stage_matched, UPSTREAM["matched"], ("data/train.parquet",), ()),
        Stage("rft", rft.stage_rft, UPSTREAM["rft"], ("samples/posterior.parquet", "models/initial"), ()),
        Stage("grpo", grpo.stage_grpo, UPSTREAM["grpo"], ("data/train.parquet", "models/initial"), ()),
        Stage("eval", stages.stage_eval, ("seed", "task", "format", "eval"), ("models/*", "data/test.parquet"),
              ("eval/summary.json",), always=True),
    ]
}
ORDER = [n for n in STAGES if n not in ("rft", "grpo")]  # `varreason run`; baselines run alone or via `compare`


def _outputs(stage: Stage, cfg: RunConfig) -> list[str]:
    if stage.name == "base" and not cfg.model.name_or_path:
        return ["models/base/config.json"]
    if stage.name == "rollout":
        return (["scores/rollouts.parquet"] if cfg.rollout.num_generations else []) + (
            ["scores/prior_samples.parquet"] if cfg.rollout.prior_samples else [])
    if stage.name == "posterior" and cfg.sample.proposal == "prior":
        return []
    if stage.name == "final":
        return [f"models/{cfg.final.name}/config.json"]
    if stage.name == "rft":
        return [f"train/{cfg.rft.name}.parquet", f"models/{cfg.rft.name}/config.json"]
    if stage.name == "grpo":
        return [f"models/{cfg.grpo.name}/config.json", f"grpo/{cfg.grpo.name}/rewards.parquet"]
    if stage.name == "matched" and cfg.final.sft_matched:
        return ["models/sft-matched/config.json"]
    return list(stage.outputs)


def run_stage(name: str, cfg: RunConfig, run: RunDir, force: bool = False) -> dict:
    """Run one stage unless its artifact is complete for the same config."""
    stage = STAGES[name]
    config_hash = cfg.section_hash(*stage.sections)
    outputs = _outputs(stage, cfg)
    if not force and not stage.always and run.is_done(name, config_hash, outputs):
        console.print(f"[dim]- {name}: done for this config, skipped[/dim]")
        return run.manifest()["stages"][name]["counts"]
    console.print(f"[bold]- {name}[/bold]")
    start = time.time()
    counts = stage.fn(cfg, run)
    run.record(name, config_hash, outputs, list(stage.inputs), counts, time.time() - start)
    return counts


def run_all(cfg: RunConfig, stages_to_run: list[str] | None = None, force: bool = False) -> dict:
    run = RunDir(cfg.output_dir)
    run.write_text("config.yaml", dump_config(cfg))
    start = time.time()
    for name in stages_to_run or ORDER:
        run_stage(name, cfg, run, force=force)
    wall = time.time() - start
    from varreason.report import write_report

    if write_report(run):
        console.print(f"report: {run.path / 'report.md'}")
    print_results(run, wall)
    return {"wall_seconds": wall}


def print_results(run: RunDir, wall: float | None = None) -> None:
    """Accuracy of every evaluated model, overall and by difficulty, as a table on stdout."""
    import json

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
