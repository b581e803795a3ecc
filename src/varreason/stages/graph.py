"""The stage table: what each stage reads, which config sections are its own, what it writes and how a process group
shares it. A stage's hashed sections are its own plus everything upstream of it, computed from `reads`, so a new
stage names only its inputs and its own section. The table imports no torch: the CLI's `--help` reads it (the
sharded commands), and a stage's function is imported when the stage runs.

    data -> base -> initial -> posterior -> sample -> score -> rollout -> weights -> build -> final -> matched -> eval

and the baselines, run alone (`varreason rft`, `varreason grpo`) or by `varreason compare`: rft (after `sample` with
`sample.proposal: prior`) and grpo (after `initial`).

`parallel` says how a process group shares a stage. "train": every rank runs it and the HF Trainer makes it
data-parallel; "split": every rank runs it and its sampling / scoring is split across the ranks by chunk (these are
also the stages a `--shard i/n` job can do its part of); "": rank 0 runs it while the others wait.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from varreason.config import RunConfig
from varreason.runs import RunDir
from varreason.stages.common import length_check_inputs, trains_q


@dataclass(frozen=True)
class Stage:
    name: str
    fn: str  # "module:function" under varreason.stages, imported when the stage runs
    own: tuple[str, ...]  # the config sections that are this stage's own (upstream ones come from `reads`)
    reads: tuple[str, ...]  # the stages whose artifacts it reads: their sections are hashed too, and it is redone
    # when one of them was made anew
    outputs: Callable[[RunConfig], list[str]]  # artifacts that must exist for it to count as done, for this config
    parallel: str = ""  # how a process group shares it: "train" | "split" | "" (rank 0 alone); see the docstring
    always: bool = False  # run every time (the stage caches its own work)
    engines: bool = True  # reads samples / scores made by a sampling engine (grpo samples with TRL: False)
    model: str = ""  # the config section naming the model it trains (final, rft, grpo): one entry per name
    fields: Callable[[RunConfig], dict] | None = None  # single fields of other sections it depends on (hashed too)
    more: Callable[[RunConfig], tuple[str, ...]] | None = None  # own sections that depend on the config

    def function(self) -> Callable[[RunConfig, RunDir], dict]:
        module, name = self.fn.split(":")
        return getattr(importlib.import_module(f"varreason.stages.{module}"), name)

    def key(self, cfg: RunConfig) -> str:
        """Its manifest entry: the stage's name, with the model's name when that is not the default one, so a
        variant (`--final.name final-acc`) is recorded beside the model it does not replace."""
        name = getattr(cfg, self.model).name if self.model else self.name
        return self.name if name == self.name else f"{self.name}:{name}"

    def sections(self, cfg: RunConfig) -> tuple[str, ...]:
        """The config sections its artifacts depend on: its own and, through `reads`, every upstream stage's."""
        out: dict[str, None] = {}
        for upstream in self.reads:
            out.update(dict.fromkeys(STAGES[upstream].sections(cfg)))
        out.update(dict.fromkeys(self.own + (self.more(cfg) if self.more else ())))
        return tuple(out)

    def settings(self, cfg: RunConfig) -> dict:
        """What its hash covers, recorded with its artifacts (a refusal names the fields that differ)."""
        extra = self.fields(cfg) if self.fields else {}
        return {**cfg.section_settings(*self.sections(cfg), engines=self.engines), **extra}

    def config_hash(self, cfg: RunConfig, round: int = 1) -> str:
        own = hashlib.sha256(json.dumps(self.settings(cfg), sort_keys=True).encode()).hexdigest()[:16]  # = section_hash
        if round == 1:
            return own
        # round t >= 2 starts from round t-1's final model, so it depends on everything that model depends on
        upstream = STAGES["final"].config_hash(cfg)
        return hashlib.sha256(f"{upstream}:{own}:round{round}".encode()).hexdigest()[:16]

    def is_done(self, cfg: RunConfig, run: RunDir) -> bool:
        """Its artifacts are there, made with these settings from the very artifacts it would read now."""
        return run.is_done(self.key(cfg), self.config_hash(cfg, run.round), self.outputs(cfg), self.made_from(cfg, run))

    def made_from(self, cfg: RunConfig, run: RunDir) -> dict:
        """The run ids of the artifacts it reads, as the folder holds them now, and of the checkpoints the folder was
        given to start from (`RunDir.starts`, round t >= 2)."""
        entries = run.manifest()["stages"]  # read once
        keys = {name: STAGES[name].key(cfg) for name in self.reads}
        made_from = {name: entries[key].get("run_id") for name, key in keys.items() if key in entries}
        return {**made_from, **{f"start:{role}": start.run_id for role, start in run.starts.items()}}


def _base_is_built(cfg: RunConfig) -> bool:
    """models/base is written by the base stage: a tiny model from scratch, or a GGUF checkpoint converted."""
    from varreason.models import is_gguf

    return not cfg.model.name_or_path or is_gguf(cfg.model.name_or_path)


def _rollout_outputs(cfg: RunConfig) -> list[str]:
    return (["scores/rollouts.parquet"] if cfg.rollout.num_generations else []) + (
        ["scores/prior_samples.parquet"] if cfg.rollout.prior_samples else [])


def _dropped_rows_depend_on(cfg: RunConfig) -> dict:
    """`task.long_rows: drop`: which rows the data stage keeps depends on the tokenizer, the templates and the length
    limits, so those fields are the data's settings too; with `refuse` they are not."""
    return {"long_rows_drop": length_check_inputs(cfg)} if cfg.task.long_rows == "drop" else {}


def _saved(section, name: str | None = None) -> str:
    """The file of a training stage's finished model folder: config.json, or adapter_config.json for a LoRA adapter
    (`lora.save: adapter`)."""
    return f"models/{name or section.name}/{section.lora.model_file()}"


def _trained_on_pi(cfg: RunConfig) -> tuple[str, ...]:
    """forward_kl's q is trained on pi's own traces and the answers after them, weighted: those settings are q's."""
    return ("sample", "rollout", "weights") if cfg.posterior.mode == "forward_kl" else ()


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("data", "pi0:stage_data", ("seed", "task"), (),
          lambda c: ["data/train.parquet", "data/test.parquet"], fields=_dropped_rows_depend_on),
    Stage("base", "pi0:stage_base", ("format", "model"), ("data",),
          lambda c: ["models/base/config.json"] if _base_is_built(c) else []),
    Stage("initial", "pi0:stage_initial", ("initial",), ("data", "base"),
          lambda c: [_saved(c.initial, "initial")], "train"),
    Stage("posterior", "variational:stage_posterior", ("posterior",), ("data", "base", "initial"),
          lambda c: [_saved(c.posterior, "posterior")] if trains_q(c) else [], "train",
          more=_trained_on_pi),
    Stage("sample", "variational:stage_sample", ("sample",), ("data", "initial", "posterior"),
          lambda c: ["samples/posterior.parquet"], "split"),
    Stage("score", "variational:stage_score", ("score",), ("sample", "initial", "posterior"),
          lambda c: ["scores/scores.parquet"], "split"),
    Stage("rollout", "variational:stage_rollout", ("rollout",), ("data", "sample", "initial"),
          _rollout_outputs, "split"),
    Stage("weights", "variational:stage_weights", ("weights",), ("sample", "score", "rollout"),
          lambda c: ["weights.parquet"]),
    Stage("build", "variational:stage_build", ("build",), ("data", "sample", "rollout", "weights"),
          lambda c: ["train/final.parquet"]),
    Stage("final", "variational:stage_final", ("final",), ("base", "initial", "build"),
          lambda c: [_saved(c.final)], "train", model="final"),
    Stage("matched", "variational:stage_matched", ("final",), ("data", "base", "initial"),
          lambda c: ([_saved(c.final, "sft-matched")] if c.final.sft_matched else [])
          + ([_saved(c.final, "sft-paper")] if c.final.sft_paper else []), "train"),
    Stage("rft", "baselines:stage_rft", ("final", "rft"), ("data", "base", "initial", "sample"),
          lambda c: [f"train/{c.rft.name}.parquet", _saved(c.rft)], "train", model="rft"),
    Stage("star", "star:stage_star", ("final", "star"), ("data", "base", "initial", "posterior", "sample"),
          lambda c: [f"train/{c.star.name}.parquet", _saved(c.star)], "train", model="star"),
    Stage("trice", "trice:stage_trice", ("final", "trice"), ("data", "base", "initial", "posterior", "sample"),
          lambda c: [f"train/{c.trice.name}.parquet", _saved(c.trice)], "train", model="trice"),
    Stage("grpo", "baselines:stage_grpo", ("sample", "grpo"), ("data", "initial"),
          lambda c: [_saved(c.grpo), f"grpo/{c.grpo.name}/rewards.parquet"], "train",
          engines=False, model="grpo"),
    Stage("latro", "latro:stage_latro", ("sample", "latro"), ("data", "initial"),
          lambda c: [_saved(c.latro), f"latro/{c.latro.name}/rewards.parquet"], "train",
          engines=False, model="latro"),
    Stage("self-distill", "self_distill:stage_self_distill", ("sample", "self_distill"),
          ("data", "base", "initial", "posterior"),
          lambda c: [_saved(c.self_distill), f"self_distill/{c.self_distill.name}/losses.parquet"],
          "train", engines=False, model="self_distill"),
    Stage("eval", "eval:stage_eval", ("seed", "task", "format", "eval"), (),
          lambda c: ["eval/summary.json"], "split", always=True),
]}
BASELINES = ("rft", "star", "trice", "grpo", "self-distill", "latro")  # run alone or by `compare`, not by `varreason run`
ORDER = [n for n in STAGES if n not in BASELINES]  # `varreason run`
SHARDED = tuple(n for n, s in STAGES.items() if s.parallel == "split")  # what a `--shard i/n` job can do its part of
VARIATIONAL_STAGES = ("posterior", "sample", "score", "rollout", "weights", "build", "final")  # q's traces -> final
ROUND_STAGES = VARIATIONAL_STAGES  # what a round t >= 2 redoes
