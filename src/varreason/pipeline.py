"""Running the stage table (`stages/graph.py`): skip-when-done, nothing finished replaced silently, rounds, the
printed results.

Rounds (`rounds: T`, Algorithm 1): round 1 is the run folder itself; round t >= 2 runs posterior -> ... -> final again
in rounds/<t>/, given round t-1's final model and q as its starting checkpoints (`round_folder`, `RunDir.starts`),
and its final model joins the run's models as <final.name>-round<t>, evaluated after the round.

A stage is skipped when the manifest holds it with the same hash of the config sections it (and everything
upstream) depends on, made from the very artifacts it reads, and its outputs exist. `eval` always runs and skips,
model by model, what it already did.

Several processes (`runs.Ranks`): each stage's `parallel` (graph.py) says how a process group shares it. Only rank 0
writes artifacts and the manifest; every stage ends with a barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from varreason import compute, logs
from varreason.config import RunConfig, dump_config
from varreason.report.run_report import difficulty_label, difficulty_levels, write_report
from varreason.runs import Ranks, RunDir, ShardFinished
from varreason.stages import pi0
from varreason.stages.graph import (  # noqa: F401 - the table's names, as `varreason.pipeline` always gave them
    BASELINES,
    ORDER,
    ROUND_STAGES,
    SHARDED,
    STAGES,
    VARIATIONAL_STAGES,
    Stage,
)

console = Console(stderr=True)


def work_key(config_hash: str, made_from: dict) -> str:
    """Keys a stage's resumable shards: its settings and the very artifacts it reads, so a shard made from a pi0
    since retrained (even with the same settings) is never merged into the new artifact."""
    if not made_from:
        return config_hash
    return hashlib.sha256(f"{config_hash}:{json.dumps(made_from, sort_keys=True)}".encode()).hexdigest()[:16]


def run_stage(name: str, cfg: RunConfig, run: RunDir, force: bool = False) -> dict:
    """Run one stage unless its artifacts are there, made with the same settings from the very artifacts it would
    read now (every rank of a group calls this)."""
    stage = STAGES[name]
    key, config_hash, outputs = stage.key(cfg), stage.config_hash(cfg, run.round), stage.outputs(cfg)
    made_from = stage.made_from(cfg, run)
    shards = work_key(config_hash, made_from)
    say = console.print if run.ranks.main else (lambda *a, **k: None)
    if not force and not stage.always and run.is_done(key, config_hash, outputs, made_from):
        say(f"[dim]- {name}: done for this config, skipped[/dim]")
        run.drop_finished_shards(shards)  # a kill may have come between its record and its shards' removal
        return run.entry(key)["counts"]
    say(f"[bold]- {name}[/bold]" + ("" if run.ranks.count == 1 else f" ({run.ranks})"))
    logs.route_libraries()  # a library first imported by the previous stage logs to the run log too
    start = time.time()
    counts: dict = {}
    compute.take()  # the stage's compute account starts here
    try:
        with run.running(shards):
            if stage.parallel or run.ranks.main:
                counts = stage.function()(cfg, run)
        if not stage.always:  # (eval's work depends on what was evaluated before: not a method's cost)
            counts = {**counts, "compute": compute.summary(compute.take(), model_shape(cfg, run))}
    except ShardFinished as done:  # a --shard job did its part: nothing merged, nothing recorded
        say(f"  {done}; `varreason {name}` without --shard merges the shards"
            + (" (and does the missing chunks)" if done.missing else ""))
        return {"missing": done.missing}
    run.ranks.wait()
    if run.ranks.main:
        run.record(key, config_hash, outputs, made_from, counts, time.time() - start, stage.settings(cfg))
        run.drop_finished_shards(shards)
    run.ranks.wait()
    return counts if run.ranks.main else run.entry(key)["counts"]


def model_shape(cfg: RunConfig, run: RunDir) -> dict | None:
    """N, n_layer and d_attn of the run's models (they share pi0's architecture) for the FLOPs of the compute
    account; None before a model exists."""
    from varreason.models import is_model_folder
    from varreason.stages.common import base_model_path

    for path in (run.path / "models" / "initial", run.path / "models" / "base", Path(base_model_path(cfg, run))):
        if is_model_folder(path):
            return compute.model_shape(str(path.resolve()))
    return None


# --- nothing finished is replaced silently ------------------------------------------------------------------------

def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict) and k not in ("style_mix", "variants"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def differing_fields(recorded: dict, now: dict) -> list[str]:
    """`field old -> new` for every setting that differs between a recorded entry and this command."""
    old, new = _flat(recorded), _flat(now)
    return [f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def is_stale(stage: Stage, entry: dict, cfg: RunConfig, run: RunDir) -> bool:
    """Made from artifacts that are no longer in the folder (an upstream stage was made anew since)."""
    return "made_from" in entry and entry["made_from"] != stage.made_from(cfg, run)


def stale_artifacts(cfg: RunConfig, run: RunDir) -> list[str]:
    """Artifacts made from inputs that the folder no longer holds (`--overwrite` replaced an upstream stage), each
    with the stage it waits for: the report flags them until their stage runs again."""
    out = []
    for key, entry in run.manifest()["stages"].items():
        stage = STAGES.get(key.split(":")[0])
        if stage is None or stage.always or not is_stale(stage, entry, cfg, run):
            continue
        now = stage.made_from(cfg, run)
        changed = [u.removeprefix("start:") for u, rid in entry["made_from"].items() if now.get(u) != rid]
        there = [_artifact(o) for o in entry.get("outputs", []) if (run.path / o).exists()]
        if there:
            out.append(f"{', '.join(there)} (made before {', '.join(changed)} was made anew; "
                       f"`varreason {stage.name}` updates it)")
    return out


def replaced_artifacts(cfg: RunConfig, run: RunDir, names: list[str]) -> list[str]:
    """What running `names` with `cfg` would replace that was made with other settings, one description each. A
    stage's artifacts made from inputs since replaced (stale) are not counted: they describe nothing in the folder."""
    found = []
    for name in names:
        stage = STAGES[name]
        entry = run.entry(stage.key(cfg))
        if not entry or entry.get("config_hash") == stage.config_hash(cfg, run.round) or is_stale(stage, entry, cfg, run):
            continue
        there = [o for o in entry.get("outputs", []) if (run.path / o).exists()]
        if name == "eval":
            there = ["eval/"] if there else []
        if there:
            fields = differing_fields(entry.get("settings", {}), stage.settings(cfg)) if entry.get("settings") else []
            shown = ", ".join(fields[:4]) + (f", ... {len(fields) - 4} more" if len(fields) > 4 else "")
            found.append(f"{', '.join(_artifact(o) for o in there)} ({shown or 'settings not recorded'})")
    return found


def _artifact(rel: str) -> str:
    parts = rel.split("/")
    return "/".join(parts[:2]) if parts[0] == "models" else rel


def refuse_replacing(cfg: RunConfig, run: RunDir, names: list[str]) -> None:
    """One line before any work when a command would replace finished artifacts made with other settings."""
    from varreason.errors import InputError

    found = replaced_artifacts(cfg, run, names)
    if found:
        more = f"; and {len(found) - 3} more stages" if len(found) > 3 else ""
        raise InputError(f"would replace artifacts made with other settings: {'; '.join(found[:3])}{more}. Keep "
                         "the folder's settings (a command without --config uses its config.yaml), give a new model "
                         "its own name (--final.name NEW), choose another --output-dir, or add --overwrite to "
                         "replace them", file=str(run.path))


def _link(path, target) -> None:
    """path -> target as a relative symlink (the run folder can move), replacing an older link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(os.path.relpath(target, path.parent), path)


def round_folder(cfg: RunConfig, run: RunDir, t: int) -> RunDir:
    """Round t >= 2 of Algorithm 1 as a run folder of its own, rounds/<t>/, whose stages are given their starting
    checkpoints (`RunDir.starts`, in its manifest): "policy" is round t-1's final model (pi_{t-1}: the phi-phase
    samples from it, traces are scored under it, and the final model continues from it with final.init initial),
    "posterior" round t-1's q, which this round's q continues from (Algorithm 1 keeps phi). data/, models/base and
    models/initial (pi0, always) are the run's."""
    previous = RunDir(run.path if t == 2 else run.path / "rounds" / str(t - 1), run.ranks)
    folder = RunDir(run.path / "rounds" / str(t), run.ranks)
    folder.round = t
    if run.ranks.main:
        for rel in ("data", "models/base", "models/initial"):
            if (run.path / rel).exists():
                _link(folder.path / rel, run.path / rel)
        old_link = folder.path / "models" / "previous-posterior"  # how a folder made before `starts` was given q
        if old_link.is_symlink():
            old_link.unlink()
        manifest, top = folder.manifest(), run.manifest()["stages"]
        for stage in ("data", "initial"):  # pi0's step count (final.max_steps -1) and the data, as compare adopts
            if stage in top:  # always the run's current entry: a retrained pi0 must not leave a stale step count
                manifest["stages"][stage] = {**top[stage], "adopted_from": str(run.path.resolve())}
        starts = {"policy": (cfg.final.name, STAGES["final"].key(cfg)), "posterior": ("posterior", "posterior")}
        manifest["starts"] = {role: {"path": os.path.relpath(previous.path / "models" / model, folder.path),
                                     "run_id": previous.run_id(key)} for role, (model, key) in starts.items()}
        folder.write_json("manifest.json", manifest)
    run.ranks.wait()
    return folder


def round_model(cfg: RunConfig, t: int) -> str:
    """The run's name for round t's final model."""
    return cfg.final.name if t == 1 else f"{cfg.final.name}-round{t}"


def run_rounds(cfg: RunConfig, run: RunDir, force: bool = False, evaluate: bool = True) -> None:
    """Rounds 2..T (`rounds`): each in its own folder; its final model linked into the run's models and evaluated."""
    for t in range(2, cfg.rounds + 1):
        if run.ranks.main:
            console.print(f"[bold]round {t} of {cfg.rounds}[/bold] (rounds/{t}/)")
        folder = round_folder(cfg, run, t)
        for name in ROUND_STAGES:
            run_stage(name, cfg, folder, force=force)
        if run.ranks.main:
            _link(run.path / "models" / round_model(cfg, t), folder.path / "models" / cfg.final.name)
        run.ranks.wait()
        if evaluate:
            run_stage("eval", cfg, run)


def _check_engines_fit_ranks(cfg: RunConfig, stages_to_run: list[str], ranks: Ranks) -> None:
    """vLLM picks GPU 0 in every rank of a torchrun group: refuse it before any stage runs (shard jobs instead)."""
    from varreason.errors import InputError

    sampling = [n for n in stages_to_run if n in SHARDED] + (  # forward_kl's posterior samples in every rank too
        ["sample"] if "posterior" in stages_to_run and cfg.posterior.mode == "forward_kl" else [])
    if ranks.count > 1 and ranks.group and any(cfg.backend_of(n) == "vllm" for n in sampling):
        import torch

        if torch.cuda.is_available():
            raise InputError("backend vllm under torchrun on GPUs: every rank's engine would start on GPU 0; run "
                             "sample / score / rollout / eval as --shard jobs, one per GPU (docs/scale.md), or use "
                             "--backend hf", field="backend")


def write_folder_config(cfg: RunConfig, run: RunDir, stages_to_run: list[str], overwrite: bool = False) -> None:
    """config.yaml describes the folder's artifacts: it is written unless a recorded stage that this command does not
    run was made with other settings (a variant such as `final --final.name v2 --final.learning_rate 1e-3` then
    keeps the folder's config.yaml; every stage's own settings are in manifest.json)."""
    others = [n for n in STAGES if n not in stages_to_run]
    differing = [] if overwrite else replaced_artifacts(cfg, run, others)
    if differing and (run.path / "config.yaml").exists():
        if run.ranks.main:
            console.print(f"[dim]config.yaml kept (it describes {differing[0].split(' (')[0]}, made with other "
                          "settings); this command's settings are in manifest.json[/dim]")
        return
    run.write_text("config.yaml", dump_config(cfg))


def run_all(cfg: RunConfig, stages_to_run: list[str] | None = None, force: bool = False,
            ranks: Ranks | None = None, overwrite: bool = False) -> dict:
    """The stages in order (default: ORDER) in this process's share (`ranks`: one process, a torchrun group, or
    a `--shard i/n` job, which does its part of one sharded stage and stops). Artifacts made with other settings
    are replaced only with `overwrite`; otherwise the command is refused before any work."""
    from varreason.errors import InputError

    run = RunDir(cfg.output_dir, ranks)
    stages_to_run = stages_to_run or ORDER
    whole = not run.ranks.shard_job  # a shard job writes its chunks only: no config, report or results table
    if not whole and (len(stages_to_run) != 1 or stages_to_run[0] not in SHARDED):
        raise InputError(f"--shard works with one of the commands {', '.join(SHARDED)}; run the other stages "
                         "without it", field="shard")
    _check_engines_fit_ranks(cfg, stages_to_run, run.ranks)
    begun, command_start = time.perf_counter(), logs.take_start()
    with run.lock(), logs.run_log(run.path, logs.log_name(run.ranks.index, run.ranks.count, run.ranks.group)):
        if not overwrite:
            refuse_replacing(cfg, run, stages_to_run)
        todo = [n for n in stages_to_run if force or not STAGES[n].is_done(cfg, run)]
        pi0.check_inputs(cfg, run, todo)  # bad data or model: one line before the first stage
        run.ranks.wait()  # no rank starts before rank 0 holds the folder
        if whole:
            write_folder_config(cfg, run, stages_to_run, overwrite)
        stage_seconds: dict[str, float] = {}
        for name in stages_to_run:
            start = time.perf_counter()
            run_stage(name, cfg, run, force=force)
            stage_seconds[name] = time.perf_counter() - start
        if stages_to_run == ORDER and cfg.rounds > 1:
            start = time.perf_counter()
            run_rounds(cfg, run, force=force)
            stage_seconds["rounds"] = time.perf_counter() - start
        wall = sum(stage_seconds.values())
        if whole and run.ranks.main and write_report(run, stale_artifacts(cfg, run)):
            console.print(f"report: {run.path / 'report.md'}")
    if run.ranks.main:
        now = time.perf_counter()
        wall_time = WallTime(None if command_start is None else now - command_start, now - begun, stage_seconds)
        print_results(run, wall_time, table=whole)  # a shard job: its wall time only
    return {"wall_seconds": wall}


@dataclass
class WallTime:
    """What the command's time went to: `command` since cli.main began (None without the CLI), `run` since
    run_all began, `stages` each stage's own time (its model loads included)."""
    command: float | None
    run: float
    stages: dict[str, float]

    def line(self) -> str:
        """`wall time: 16.2 s = start-up 9.8 s (imports, config) + stages 4.5 s (sample 1.9, initial 1.1) + checks
        and report 1.9 s`."""
        stages = sum(self.stages.values())
        total = self.command if self.command is not None else self.run
        slowest = sorted(self.stages.items(), key=lambda kv: -kv[1])[:3]
        parts = []
        if self.command is not None:
            parts.append(f"start-up {self.command - self.run:.1f} s (imports, config)")
        parts.append(f"stages {stages:.1f} s"
                     + (f" ({', '.join(f'{n} {t:.1f}' for n, t in slowest)})" if len(self.stages) > 1 else ""))
        parts.append(f"checks and report {max(0.0, self.run - stages):.1f} s")
        return f"wall time: {total:.1f} s = " + " + ".join(parts)


def print_results(run: RunDir, wall: WallTime | None = None, table: bool = True) -> None:
    """Accuracy of every evaluated model, overall and by difficulty, as a table on stdout (when the folder has an
    evaluation and `table`), then the wall time."""
    summary = run.read_json("eval/summary.json") if table else None
    out = Console()
    if summary is not None:
        print_table(out, run, summary)
    if wall is not None:
        out.print(wall.line(), highlight=False, soft_wrap=True)


def print_table(out: Console, run: RunDir, summary: dict) -> None:
    levels = difficulty_levels(summary)
    table = Table(caption=None if levels else "no difficulty given")
    table.add_column("model")
    table.add_column("overall (95% CI)", justify="right")
    for d in levels:
        table.add_column(difficulty_label(d), justify="right")
    for name, m in summary.items():
        cells = [f"{m['accuracy']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}]"]
        cells += [f"{m['by_difficulty'][d]['accuracy']:.1%}" if d in m["by_difficulty"] else "-" for d in levels]
        table.add_row(name, *cells)
    out.print(f"Held-out accuracy ({run.path})", highlight=False, soft_wrap=True)  # a title would wrap a long path
    out.print(table)
    tasks = sorted({t for m in summary.values() for t in m.get("by_task", {})})
    if len(tasks) > 1:
        for name, m in summary.items():
            out.print(f"{name} by task: " + ", ".join(f"{t} {m['by_task'][t]['accuracy']:.1%}" for t in tasks))
