"""`varreason compare`: every method from the same pi0, on the same data, evaluated with the same sampling.

Each method is a complete run folder `DIR/methods/<name>/` (open it with the usual tools, rerun any stage in it).
Stages that two methods share with the same config (data, base, pi0, q, samples, ...) run once: a method's folder
adopts a finished stage of an earlier method, or of a `--reuse` run folder, by linking its outputs when the stage's
config hash is the same. `DIR/summary.json` maps each method to its held-out accuracy (Wilson 95% CI), accuracy by
difficulty and the wall time of every stage it needs (pi0 included; adopted stages count with their recorded time).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from varreason import compute, logs
from varreason.config import RunConfig, dump_config, set_value, validate
from varreason.errors import InputError
from varreason.pipeline import STAGES, refuse_replacing, run_rounds, run_stage, write_folder_config
from varreason.preflight import check_machine
from varreason.report import bias
from varreason.report.run_report import difficulty_label, difficulty_levels
from varreason.runs import RunDir
from varreason.stages.eval import evaluate_if_changed
from varreason.stages.methods import METHODS, PI0_STAGES, Method

console = Console(stderr=True)
def resolve_methods(cfg: RunConfig) -> dict[str, Method]:
    """The methods to run, in order: `compare.methods` (declared in stages/methods.py) then `compare.variants`."""
    out: dict[str, Method] = {}
    for name in cfg.compare.methods:
        if name not in METHODS:
            close = difflib.get_close_matches(name, list(METHODS) + list(cfg.compare.variants), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown method '{name}' in compare.methods{hint}; built-in: {', '.join(METHODS)}")
        out[name] = METHODS[name]
    for name, spec in cfg.compare.variants.items():
        spec = dict(spec or {})
        base = spec.pop("method", None)
        if base not in METHODS:
            raise InputError(f"compare.variants.{name}: 'method' must be one of {', '.join(METHODS)}, got {base!r}")
        if name in out:
            raise InputError(f"compare.variants.{name}: the name is taken by a built-in method")
        try:
            out[name] = METHODS[base].variant(name, spec)
        except ValueError as e:
            raise InputError(f"compare.variants.{name}: {e}") from None
    if not out:
        raise InputError("compare.methods and compare.variants are both empty: nothing to compare")
    for name, m in out.items():
        if m.flops_of and m.flops_of not in out:
            raise InputError(f"{name} matches the FLOPs of {m.flops_of}, which is not among the methods to compare "
                             f"({', '.join(out)})")
        if m.flops_of and m.flops_of not in list(out)[: list(out).index(name)]:
            raise InputError(f"{name} matches the FLOPs of {m.flops_of}: put {m.flops_of} before it (compare.methods "
                             "run first, then compare.variants, each in its order)")
    return out


def method_config(cfg: RunConfig, name: str, method: Method, root: Path) -> RunConfig:
    mc = copy.deepcopy(cfg)
    for key, value in method.overrides().items():
        set_value(mc, key, value if isinstance(value, str) else json.dumps(value), source=f"compare method {name}")
    mc.output_dir = str(root / "methods" / name)
    return check_machine(validate(mc))  # a method's settings that this machine cannot run: refused before any work


# --- adopting finished stages from other run folders ------------------------------------------------------------------

def _link_target(rel: str) -> str:
    """What to link for a recorded output: the model folder for files inside models/<name>/, else the file."""
    parts = Path(rel).parts
    return str(Path(*parts[:2])) if parts[0] == "models" and len(parts) > 2 else rel


def adopt(run: RunDir, stage: str, cfg: RunConfig, donors: list[RunDir]) -> bool:
    """Link a finished stage of a donor run into `run` when the donor made it with the same settings, from the very
    artifacts this folder holds (its inputs' run ids), and has every output this config expects; True if adopted."""
    key, config_hash, expected = STAGES[stage].key(cfg), STAGES[stage].config_hash(cfg), STAGES[stage].outputs(cfg)
    made_from = STAGES[stage].made_from(cfg, run)
    for donor in donors:
        if donor.path.resolve() == run.path.resolve():
            continue
        entry = donor.entry(key)
        if not entry or entry.get("config_hash") != config_hash or entry.get("made_from", made_from) != made_from:
            continue
        outputs = sorted(set(entry["outputs"]) | set(expected))
        if not all((donor.path / o).exists() for o in outputs):
            continue
        for rel in sorted({_link_target(o) for o in outputs}):
            dest, src = run.path / rel, (donor.path / rel).resolve()
            if dest.is_symlink() or (dest.exists() and dest.is_file()):
                dest.unlink()
            elif dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dest)
        manifest = run.manifest()
        manifest["stages"][key] = {**entry, "adopted_from": str(donor.path.resolve())}
        run.write_json("manifest.json", manifest)
        return True
    return False


def adopt_or_run(stage: str, cfg: RunConfig, run: RunDir, donors: list[RunDir], force: bool = False) -> None:
    """A stage of a method's folder: done already, adopted from a donor that made it the same way, or run here."""
    if not force and not STAGES[stage].is_done(cfg, run) and adopt(run, stage, cfg, donors):
        console.print(f"[dim]- {stage}: adopted (same config) from {run.entry(STAGES[stage].key(cfg))['adopted_from']}[/dim]")
        return
    run_stage(stage, cfg, run, force=force)


# --- running ----------------------------------------------------------------------------------------------------------

def run_method(name: str, method: Method, cfg: RunConfig, donors: list[RunDir], force: bool = False,
               overwrite: bool = False) -> dict:
    """Run (or adopt) every stage of one method in its own folder, then evaluate its model."""
    run = RunDir(cfg.output_dir)
    stages = list(PI0_STAGES + method.stages)
    with run.lock():
        write_folder_config(cfg, run, stages, overwrite)
        console.rule(f"[bold]{name}[/bold]: {method.description}")
        for stage in stages:
            adopt_or_run(stage, cfg, run, donors, force=force and stage in method.stages)
        if method.training.rounds and cfg.rounds > 1:
            run_rounds(cfg, run, force=force, evaluate=False)
        model = method.model(cfg)
        metrics = evaluate_if_changed(cfg, run, model, force=force)
    entries = {s: run.entry(STAGES[s].key(cfg)) for s in stages}
    wall = {s: e["wall_seconds"] for s, e in entries.items() if e}
    own = [e["counts"].get("compute") for s, e in entries.items() if e and s not in PI0_STAGES] + round_compute(run)
    return {"method": method.base or method.name, "model": model, "run_dir": str(run.path),
            "compute": compute.combine(own),
            "pi0_compute": compute.combine([e["counts"].get("compute") for s, e in entries.items() if e and s in PI0_STAGES]),
            "accuracy": metrics["accuracy"],
            "ci_low": metrics["ci_low"], "ci_high": metrics["ci_high"], "n": metrics["n"],
            "by_difficulty": metrics["by_difficulty"], "wall_seconds": sum(wall.values()),
            "method_wall_seconds": sum(v for s, v in wall.items() if s not in PI0_STAGES),
            "eval_seconds": metrics.get("generation_seconds"), "stage_wall_seconds": wall}


def round_compute(run: RunDir) -> list[dict]:
    """The compute of rounds 2..T (their own stages, not those adopted from the run)."""
    out = []
    for folder in sorted((run.path / "rounds").glob("*")) if (run.path / "rounds").exists() else []:
        stages = RunDir(folder, run.ranks).manifest()["stages"]
        out += [e["counts"].get("compute") for e in stages.values() if "adopted_from" not in e]
    return out


def flops_matched(cfg: RunConfig, name: str, method: Method, results: dict) -> RunConfig:
    """`method` with final.max_steps chosen so that its training FLOPs equal the own FLOPs of `method.flops_of`
    (already run): FLOPs per teacher example from pi0's training, which reads the same rows."""
    ref = results[method.flops_of]  # run before it (resolve_methods)
    initial = RunDir(ref["run_dir"]).entry("initial")["counts"]
    per_example = initial["compute"]["flops"]["trained"] / (initial["optimizer_steps"] * initial["examples_per_step"])
    examples_per_step = cfg.final.per_device_train_batch_size * cfg.final.gradient_accumulation_steps
    out = copy.deepcopy(cfg)
    out.final.max_steps = compute.steps_for_flops(ref["compute"]["flops"]["total"], per_example, examples_per_step)
    console.print(f"[dim]{name}: {out.final.max_steps} steps give it the {ref['compute']['flops']['total']:.3g} "
                  f"FLOPs that {method.flops_of} spent on its own stages[/dim]")
    return out


def difficulty_source(cfg: RunConfig, root: Path, configs: dict[str, RunConfig],
                      donors: list[RunDir]) -> dict[str, float]:
    """pi0's accuracy P per sampled training question, from the no-hint samples (run here if no method made them)."""
    for mcfg in configs.values():
        run = RunDir(mcfg.output_dir)
        if mcfg.sample.proposal == "prior" and (run.path / "samples" / "posterior.parquet").exists():
            return bias.pi0_accuracy(run.read_rows("samples/posterior.parquet"))
    pcfg = copy.deepcopy(cfg)
    pcfg.sample.proposal = "prior"
    pcfg.output_dir = str(root / "methods" / "_pi0-samples")
    run = RunDir(pcfg.output_dir)
    for stage in PI0_STAGES + ("sample",):
        adopt_or_run(stage, pcfg, run, donors)
    return bias.pi0_accuracy(run.read_rows("samples/posterior.parquet"))


def run_compare(cfg: RunConfig, out_dir: str | Path, reuse: list[str] | None = None, force: bool = False,
                overwrite: bool = False) -> dict:
    """Train and evaluate every method; write summary.json, bias.json, report.md and plots under `out_dir`."""
    root = Path(out_dir)
    methods = resolve_methods(cfg)
    configs = {name: method_config(cfg, name, m, root) for name, m in methods.items()}  # all checked before any work
    for path in reuse or []:
        if not (Path(path) / "manifest.json").exists():
            raise InputError("--reuse needs a run folder with a manifest.json", file=str(path))
    if not overwrite:  # a method folder made with other settings: refused before any method runs
        for name, m in methods.items():  # (a FLOPs-matched method's steps are known once its reference ran)
            if not m.flops_of and (Path(configs[name].output_dir) / "manifest.json").exists():
                refuse_replacing(configs[name], RunDir(configs[name].output_dir), list(PI0_STAGES + m.stages))
    top = RunDir(root)
    with top.lock(), logs.run_log(top.path):  # library chatter (TRL, vLLM, HF) into DIR/logs/run.log
        top.write_text("config.yaml", dump_config(cfg))
        donors = [RunDir(p) for p in reuse or []]
        start = time.time()
        results: dict = {}
        for name, m in methods.items():
            if m.flops_of:
                configs[name] = flops_matched(configs[name], name, m, results)
                if not overwrite and (Path(configs[name].output_dir) / "manifest.json").exists():
                    refuse_replacing(configs[name], RunDir(configs[name].output_dir), list(PI0_STAGES + m.stages))
            folders = [RunDir(c.output_dir) for c in configs.values() if Path(c.output_dir).exists()]
            results[name] = run_method(name, m, configs[name], donors + folders, force=force, overwrite=overwrite)
            top.write_json("summary.json", {n: _public(r) for n, r in results.items()})
        p_of = difficulty_source(cfg, root, configs, donors + [RunDir(r["run_dir"]) for r in results.values()])
        curves = {}
        for name, m in methods.items():
            curve = bias.measure(m.bias, configs[name], RunDir(configs[name].output_dir), p_of) if m.bias else None
            if curve:
                curves[name] = curve
        top.write_json("bias.json", curves)
        top.write_json("summary.json", {n: _public(r) for n, r in results.items()})
        top.write_json("details.json", results)
        write_compare_report(top, results, curves, methods)
        print_compare(results, time.time() - start)
        return results


def _public(r: dict) -> dict:
    keys = ("accuracy", "ci_low", "ci_high", "n", "by_difficulty", "wall_seconds", "method_wall_seconds", "model",
            "compute", "pi0_compute")
    return {k: r[k] for k in keys}


# --- output -----------------------------------------------------------------------------------------------------------

def _measured(value: float | None, spec: str) -> str:
    """A fitted number, or "-" where nothing was there to fit (e.g. no question with 0 < P < 1 on a small run)."""
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


COMPUTE_COLUMNS = ["generated", "read forward", "trained", "FLOPs"]  # the method's own stages (pi0's is shared)


def _count(n: float) -> str:
    """A token count in a column: 812, 45.2k, 3.10M."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


def compute_cells(r: dict) -> list[str]:
    """The four compute columns of a method: tokens generated, read forward only (prompts, scoring), trained, and
    the FLOPs of its own stages."""
    c = r.get("compute") or compute.combine([])
    return [_count(c["generated"]), _count(c["prefilled"] + c["scored"]), _count(c["trained"]),
            f"{c['flops']['total']:.2e}"]


def print_compare(results: dict, wall: float | None = None) -> None:
    levels = difficulty_levels(results)
    table = Table(title="Held-out accuracy, every method from the same pi0")
    for col in ["method", "accuracy (95% CI)"] + [difficulty_label(d) for d in levels] + ["wall s (method)"]:
        table.add_column(col, justify="left" if col == "method" else "right")
    spent = Table(title="Compute of each method's own stages (pi0's are shared)")
    for col in ["method"] + COMPUTE_COLUMNS:
        spent.add_column(col, justify="left" if col == "method" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['accuracy']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]",
                      *[f"{r['by_difficulty'][d]['accuracy']:.1%}" if d in r["by_difficulty"] else "-" for d in levels],
                      f"{r['wall_seconds']:.0f} ({r['method_wall_seconds']:.0f})")
        spent.add_row(name, *compute_cells(r))
    out = Console()
    out.print(table)
    out.print(spent)
    if wall is not None:
        out.print(f"compare wall time this call: {wall:.1f} s (adopted and finished stages are not redone)")


def plot_accuracy(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    acc = [results[n]["accuracy"] for n in names]
    err = [[a - results[n]["ci_low"] for n, a in zip(names, acc)], [results[n]["ci_high"] - a for n, a in zip(names, acc)]]
    ax.bar(range(len(names)), acc, yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy (Wilson 95% CI)")
    ax.set_ylim(0, 1)
    pi0 = [results[n]["wall_seconds"] - results[n]["method_wall_seconds"] for n in names]
    own = [results[n]["method_wall_seconds"] for n in names]
    bx.bar(range(len(names)), pi0, color="lightgrey", label="data, base, pi0")
    bx.bar(range(len(names)), own, bottom=pi0, color="tab:orange", label="the method's own stages")
    bx.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("wall time (s)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_flops(results: dict, path) -> None:
    """Held-out accuracy against the FLOPs a method spent (pi0's shared training plus its own stages), one point
    per method with its Wilson 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        flops = (r.get("pi0_compute") or compute.combine([]))["flops"]["total"] + (
            r.get("compute") or compute.combine([]))["flops"]["total"]
        if flops <= 0:
            continue
        ax.errorbar([flops], [r["accuracy"]], yerr=[[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]],
                    marker="o", capsize=3)
        ax.annotate(name, (flops, r["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs: pi0's training + the method's own stages")
    ax.set_ylabel("held-out accuracy (Wilson 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_compare_report(top: RunDir, results: dict, curves: dict, methods: dict) -> None:
    from varreason.report.run_report import plot_accuracy_by_difficulty

    plots = top.path / "plots"
    plots.mkdir(exist_ok=True)
    plot_accuracy(results, plots / "accuracy.png")
    plot_accuracy_by_difficulty(results, plots / "accuracy_by_difficulty.png")
    levels = difficulty_levels(results)
    lines = [f"# Method comparison: {top.path.name}", "",
             ("Every method starts from the same pi0 and is evaluated on the same held-out problems with the same "
             "sampling. Wall time counts every stage a method needs, pi0 included (method: its own stages)."), "",
             ("Compute (src/varreason/compute.py) counts the method's own stages, pi0's shared ones not included: tokens "
              "generated, read forward only (prompts before sampling, scoring), trained (forward and backward), and "
              "their FLOPs (2N per token read, 6N per token trained, plus attention)."), "",
             "| method | accuracy | 95% CI | " + " | ".join(difficulty_label(d) for d in levels)
             + " | " + " | ".join(COMPUTE_COLUMNS) + " | wall s | method s |",
             "|---|---|---|" + "---|" * (len(levels) + len(COMPUTE_COLUMNS)) + "---|---|"]
    for name, r in results.items():
        cells = [f"{r['by_difficulty'][d]['accuracy']:.1%}" if d in r["by_difficulty"] else "-" for d in levels]
        lines.append(f"| {name} | {r['accuracy']:.1%} | [{r['ci_low']:.1%}, {r['ci_high']:.1%}] | "
                     + " | ".join(cells + compute_cells(r))
                     + f" | {r['wall_seconds']:.0f} | {r['method_wall_seconds']:.0f} |")
    plot_accuracy_flops(results, plots / "accuracy_flops.png")
    lines += ["", "![accuracy and wall time](plots/accuracy.png)", "",
              "![accuracy by difficulty](plots/accuracy_by_difficulty.png)", "",
              "![accuracy against FLOPs](plots/accuracy_flops.png)", "", "## Methods", ""]
    lines += [f"- `{n}`: {m.description} (`{results[n]['run_dir']}`)" for n, m in methods.items()]
    if curves:
        bias.plot_bias(curves, plots / "bias.png")
        lines += ["", "## Accuracy bias: the weight each method puts on a question vs its difficulty", "",
                  ("Measured from each method's training data or rollouts (see `report/bias.py`); the red curve is the paper's "
                  "formula for that method, scaled by least squares; relative RMSE 0 = the formula exactly."), "",
                  "| method | formula | x | points | fitted scale | rel. RMSE | mean weight at P = 0 / ½ / 1 |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in curves.items():
            at = {round(b["p"], 3): b["mean_weight"] for b in c["bins"]}
            picks = " / ".join(f"{at[p]:.2f}" if p in at else "-" for p in (0.0, 0.5, 1.0))
            lines.append(f"| {name} | {c['formula']} {bias.FORMULA_LABEL[c['formula']]} | {c['x']} | {c['points']} | "
                         f"{_measured(c['scale'], '.3g')} | {_measured(c['relative_rmse'], '.3f')} | {picks} |")
        for name, c in curves.items():
            if "group_relative_rmse" in c:
                lines += ["", (f"`{name}` by the accuracy of each rollout group instead of pi0's: {c['groups']} groups, "
                          f"fitted scale {_measured(c['group_scale'], '.3g')}, relative RMSE "
                          f"{_measured(c['group_relative_rmse'], '.3f')}.")]
        lines += ["", "![bias](plots/bias.png)", ""]
    top.write_text("report.md", "\n".join(lines) + "\n")
