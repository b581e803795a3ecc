"""Run configuration: one dataclass per concern, YAML presets, `--section.field value` overrides.

Field names follow TRL where TRL has one (`learning_rate`, `per_device_train_batch_size`, `max_steps`,
`temperature`, `max_completion_length`, `num_generations`, `output_dir`, ...). Every field can be set from
the command line; an unknown key or a value of the wrong type is one line of error (exit status 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from varreason.errors import InputError


@dataclass
class TaskConfig:
    """Where problems come from: the built-in arithmetic suite or a user's file / `datasets` name."""

    source: str = "builtin"  # "builtin", a .jsonl/.json/.parquet file, or a `datasets` name
    families: list[str] = field(default_factory=lambda: ["sum", "product"])
    difficulties: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_train: int = 4000
    n_test: int = 500
    style_mix: dict[str, float] = field(default_factory=lambda: {"careful": 0.5, "terse": 0.35, "corrected": 0.15})
    # user data
    test_source: str | None = None  # held-out file; when absent, `test_fraction` of `source` is held out
    test_fraction: float = 0.1
    split: str = "train"
    question_column: str = "question"
    trace_column: str = "trace"
    answer_column: str = "answer"
    difficulty_column: str | None = None
    answer_kind: str = "math"  # verifier for user data: math | integer


@dataclass
class FormatConfig:
    """The reasoning format and its marker strings (all configurable)."""

    think_open: str = "<think>"
    think_close: str = "</think>"
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"
    system_prompt: str = ""  # reasoning-model system prompt; empty = none (the tiny model needs none)
    posterior_format: str = "B"  # A: solution first, then explanation; B: reconstruct reasoning for a given answer
    use_chat_template: bool = True


@dataclass
class ModelConfig:
    """The base model: a local path / hub id, or `null` to build a tiny Qwen3 from scratch."""

    name_or_path: str | None = None
    vocab_size: int = 1024
    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 512
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 1024
    tokenizer_corpus_size: int = 4000  # problems used to train the tokenizer (train split only)


@dataclass
class SFTConfig:
    """(Weighted) SFT on the HF Trainer; TRL's field names."""

    learning_rate: float = 2e-3
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    normalizer: str = "constant"  # constant (Dr. SFT) | tokens (the usual token mean)
    group_by_length: bool = True
    logging_steps: int = 20
    save_steps: int = 200
    save_total_limit: int = 1
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    bf16: bool = False  # fp32 on CPU: bf16 is emulated there and ~10x slower
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0


@dataclass
class PosteriorConfig(SFTConfig):
    """q_φ(z | x, y′): SFT with the answer hint in the prompt (format A or B: `format.posterior_format`)."""

    mode: str = "teacher"  # teacher: SFT on the teacher traces (the released recipe); forward_kl: a later issue
    init: str = "base"  # base (the released recipe) | initial (Algorithm 1: q starts as a copy of pi0)


@dataclass
class SampleConfig:
    """K traces per training question from q (paper: K = 8, temperature 0.7, top_p 1)."""

    num_questions: int | None = None  # a seeded subset of the training questions (the paper's 1K setting); null = all
    proposal: str = "posterior"  # posterior: q with the hint; prior: pi0 without it (the paper's "w/o y'" ablation)
    num_generations: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_completion_length: int = 256
    batch_size: int = 64
    chunk_size: int = 128  # questions per resumable shard


@dataclass
class ScoreConfig:
    """Per-token log-probs of the traces under pi0 and q, and of the reference answer under pi0."""

    batch_size: int = 64
    chunk_size: int = 1024  # positions per log-softmax chunk (memory), see backends/hf.py


@dataclass
class RolloutConfig:
    """M answers of pi0 after each (question, trace), verified: the accuracy estimator's data."""

    num_generations: int = 8  # M; 0 skips rollouts (then the accuracy estimator is unavailable)
    temperature: float = 0.7
    top_p: float = 1.0
    max_completion_length: int = 32  # the answer section only
    batch_size: int = 256
    chunk_size: int = 128  # questions per resumable shard
    prior_samples: int = 2  # pi0's own traces per question (no hint), to compare with q's traces in the report


@dataclass
class WeightsConfig:
    """Importance weights per (question, trace): estimator of log pi(Y|x,z) and the log-ratio mode."""

    estimator: str = "gml"  # gml | accuracy | likelihood
    ratio: str = "geometric"  # geometric (per-token mean, the paper's) | exact (sum, the true IWAE ratio)
    max_trace_tokens: int | None = None  # longer traces are ineligible (the released 28000 cutoff); null = none
    require_finished: bool = True  # a trace q did not finish (hit max_completion_length) is ineligible


@dataclass
class BuildConfig:
    """The final training set from the weights."""

    mode: str = "best"  # best: argmax rho per question (17K recipe); weighted: all K traces with weight rho~ (1K recipe)
    mix: bool = True  # add the teacher data of every training question (the paper's 17K mix: 1:1 when q covers all)
    min_weight: float = 0.0  # weighted mode: drop rows with rho~ below this (counted), to spare compute


@dataclass
class FinalConfig(SFTConfig):
    """The final reasoning model: weighted SFT on the built set; plus its compute-matched SFT baseline."""

    name: str = "final"  # the model folder models/<name> (name variants to keep several in one run)
    init: str = "base"  # base (the paper) | initial (continue from pi0)
    # max_steps -1 = the same number of optimiser steps as pi0 (the paper: same steps, batch doubled for the mix)
    sft_matched: bool = True  # also train `sft-matched`: the teacher data, same init, steps and batch as final


@dataclass
class RFTConfig(SFTConfig):
    """Rejection-sampling fine-tuning: pi0's own traces (the `sample` stage with `sample.proposal: prior`), verified;
    the correct ones are kept and trained on by SFT."""

    # max_steps -1 = the final model's optimiser steps (compute-matched with it)
    name: str = "rft"
    init: str = "initial"  # initial (continue from pi0, as the demo's final model) | base
    mode: str = "keep"  # keep: every correct trace, weight 1 (per-question weight ~ P) | normalized: weight 1/c_i
    mix: bool = True  # add the teacher data of every training question, as the variational build does
    require_finished: bool = True  # a trace that hit max_completion_length is not kept even if its answer is right


@dataclass
class GRPOSection:
    """GRPO from pi0 with our verifier as the reward, on TRL's GRPOTrainer; TRL's field names and CPU-safe defaults."""

    name: str = "grpo"  # the model folder models/<name>
    reward: str = "binary"  # binary: 1 if verified correct | debiased: 1(correct) / batch accuracy of the question (§4)
    learning_rate: float = 1e-5
    max_steps: int = 100
    per_device_train_batch_size: int = 64  # completions per optimiser step (prompts x num_generations)
    gradient_accumulation_steps: int = 1
    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    beta: float = 0.0  # KL to the reference model (TRL's default: none, no reference model loaded)
    epsilon: float = 0.2
    loss_type: str = "dapo"  # TRL: grpo | dr_grpo | dapo | bnpo | ...
    scale_rewards: str = "group"  # group (GRPO: divide by the group std) | batch | none (Dr. GRPO)
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 50
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    bf16: bool = False  # fp32 on CPU: bf16 is emulated there and ~10x slower (TRL's default is True)
    gradient_checkpointing: bool = False  # TRL's default is True: ~10x slower on this CPU for a tiny model


@dataclass
class CompareConfig:
    """`varreason compare`: which methods to train and evaluate side by side, and named variants of them."""

    methods: list[str] = field(default_factory=lambda: ["sft", "sft-matched", "variational", "no-hint", "rft", "grpo",
                                                        "grpo-debiased"])
    # extra entries: name -> {method: <built-in method>, <section.field>: value, ...}
    variants: dict[str, dict] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """Held-out evaluation: sampling settings and batching."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_generations: int = 1
    max_completion_length: int = 256
    batch_size: int = 64


@dataclass
class RunConfig:
    output_dir: str = "runs/demo"
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = all cores
    task: TaskConfig = field(default_factory=TaskConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    initial: SFTConfig = field(default_factory=SFTConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """A short hash of the named sections: a stage is redone when the config it depends on changes."""
        data = self.to_dict()
        payload = {name: data[name] for name in sections}
        for section, key in HASH_OMIT_AT_DEFAULT:  # options added later: at their default they change no hash
            if section in payload and payload[section].get(key) == _DEFAULTS[section][key]:
                del payload[section][key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Fields added after runs existed whose default reproduces the old behaviour: left out of the stage hashes at their
# default, so finished stages of older run folders are still reused (and `compare --reuse` finds them).
HASH_OMIT_AT_DEFAULT = {("sample", "proposal")}
_DEFAULTS = RunConfig().to_dict()


# ---------------------------------------------------------------------------------------------------------------
# building from YAML + overrides, with type checking


def _check_value(value: Any, hint: Any, key: str, source: str) -> Any:
    """Coerce `value` to the annotated type or raise a one-line InputError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, arg, key, source)
            except InputError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and args and args[0] is not str:
            value = [value]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise InputError(f"'{key}' must be a list, got {type(value).__name__} {value!r}", file=source)
        return [_check_value(v, args[0], key, source) for v in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a mapping, got {type(value).__name__} {value!r}", file=source)
        return {str(k): _check_value(v, args[1], key, source) for k, v in value.items()} if args else value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"'{key}' must be true or false, got {value!r}", file=source)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"'{key}' must be an integer, got {value!r}", file=source)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"'{key}' must be a number, got {value!r}", file=source)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"'{key}' must be a string, got {value!r}", file=source)
    return value


def _unknown_key(key: str, known: list[str], source: str) -> InputError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(f"unknown config key '{key}'{hint}", file=source)


def _apply(obj: Any, data: dict, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(data, dict):
        raise InputError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}", file=source)
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(prefix + str(key), names, source)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value or {}, f"{prefix}{key}.", source)
        else:
            setattr(obj, key, _check_value(value, hints[key], prefix + key, source))


def set_value(cfg: RunConfig, dotted: str, raw: str, source: str = "command line") -> None:
    """Set one field from a `section.field` key and a YAML-parsed string value."""
    try:
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError:
        value = raw
    parts = dotted.replace("-", "_").split(".")
    nested: dict = value
    for part in reversed(parts):
        nested = {part: nested}
    _apply(cfg, nested, "", source)


def validate(cfg: RunConfig) -> RunConfig:
    """Cross-field checks that types alone cannot express."""
    choices = {
        "initial.normalizer": (cfg.initial.normalizer, {"constant", "tokens"}),
        "posterior.normalizer": (cfg.posterior.normalizer, {"constant", "tokens"}),
        "final.normalizer": (cfg.final.normalizer, {"constant", "tokens"}),
        "posterior.mode": (cfg.posterior.mode, {"teacher", "forward_kl"}),
        "posterior.init": (cfg.posterior.init, {"base", "initial"}),
        "final.init": (cfg.final.init, {"base", "initial"}),
        "weights.estimator": (cfg.weights.estimator, {"gml", "accuracy", "likelihood"}),
        "weights.ratio": (cfg.weights.ratio, {"geometric", "exact"}),
        "build.mode": (cfg.build.mode, {"best", "weighted"}),
        "sample.proposal": (cfg.sample.proposal, {"posterior", "prior"}),
        "rft.mode": (cfg.rft.mode, {"keep", "normalized"}),
        "rft.init": (cfg.rft.init, {"base", "initial"}),
        "rft.normalizer": (cfg.rft.normalizer, {"constant", "tokens"}),
        "grpo.reward": (cfg.grpo.reward, {"binary", "debiased"}),
        "grpo.scale_rewards": (cfg.grpo.scale_rewards, {"group", "batch", "none"}),
        "grpo.loss_type": (cfg.grpo.loss_type, {"grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"}),
        "format.posterior_format": (cfg.format.posterior_format, {"A", "B"}),
        "task.answer_kind": (cfg.task.answer_kind, {"math", "integer"}),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(f"'{key}' must be one of {sorted(allowed)}, got {value!r}")
    if cfg.task.n_train < 1 or cfg.task.n_test < 1:
        raise InputError("'task.n_train' and 'task.n_test' must be positive")
    if not 0.0 < cfg.task.test_fraction < 1.0:
        raise InputError(f"'task.test_fraction' must be in (0, 1), got {cfg.task.test_fraction}")
    if cfg.final.name in ("base", "initial", "posterior", "sft-matched") or not cfg.final.name.replace("-", "").replace(
            "_", "").isalnum():
        raise InputError(f"'final.name' must be a new model name (letters, digits, - and _), got {cfg.final.name!r}")
    for section in ("rft", "grpo"):
        name = getattr(cfg, section).name
        if name in ("base", "initial", "posterior", "sft-matched", cfg.final.name) or not name.replace("-", "").replace(
                "_", "").isalnum():
            raise InputError(f"'{section}.name' must be a new model name (letters, digits, - and _), got {name!r}")
    if cfg.grpo.reward == "debiased" and cfg.grpo.scale_rewards == "group":
        raise InputError("'grpo.reward: debiased' with 'grpo.scale_rewards: group' is plain GRPO: dividing a group's "
                         "rewards by its accuracy is undone by dividing by the group's std; use 'none' or 'batch'")
    g = cfg.grpo
    if g.num_generations < 2 or (g.per_device_train_batch_size * g.gradient_accumulation_steps) % g.num_generations:
        raise InputError("'grpo.num_generations' must be >= 2 and divide per_device_train_batch_size x "
                         "gradient_accumulation_steps (whole groups per optimiser step)")
    if cfg.posterior.mode == "forward_kl":
        raise InputError("'posterior.mode: forward_kl' (Algorithm 1's phi-phase) is not implemented yet; use 'teacher'")
    if cfg.sample.num_generations < 1:
        raise InputError("'sample.num_generations' (K) must be at least 1")
    if cfg.sample.num_questions is not None and cfg.sample.num_questions < 1:
        raise InputError("'sample.num_questions' must be positive or null (all training questions)")
    if cfg.rollout.num_generations < 0 or cfg.rollout.prior_samples < 0:
        raise InputError("'rollout.num_generations' and 'rollout.prior_samples' must be >= 0")
    if cfg.weights.estimator == "accuracy" and cfg.rollout.num_generations == 0:
        raise InputError("'weights.estimator: accuracy' needs rollouts: set 'rollout.num_generations' (M) above 0")
    markers = [cfg.format.think_open, cfg.format.think_close, cfg.format.answer_open, cfg.format.answer_close]
    if any(not m for m in markers) or len(set(markers)) != 4:
        raise InputError("the four format markers must be non-empty and distinct")
    return cfg


def preset_path(name: str) -> Path:
    """A preset shipped with the package (`demo`, `smoke`, ...)."""
    return Path(str(resources.files("varreason") / "configs" / f"{name}.yaml"))


def load_config(path: str | Path | None = None, overrides: list[tuple[str, str]] | None = None) -> RunConfig:
    """Defaults <- YAML file (or the `demo` preset) <- command-line overrides; then validate."""
    cfg = RunConfig()
    if path is None:
        path = preset_path("demo")
    elif not Path(path).exists() and preset_path(str(path)).exists():
        path = preset_path(str(path))
    path = Path(path)
    if not path.exists():
        raise InputError("config file not found", file=str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", file=str(path)) from None
    _apply(cfg, data, "", str(path))
    for key, value in overrides or []:
        set_value(cfg, key, value)
    return validate(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def field_help() -> str:
    """Every overridable key with its default, for `--help`."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  --{prefix}{f.name} {json.dumps(value)}")

    walk(RunConfig(), "")
    return "\n".join(lines)
