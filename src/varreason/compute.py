"""The compute account: how many tokens each stage generated, read forward only (prompts before sampling, scoring)
and trained on (forward + backward), and the FLOPs they took. Recorded per stage in the manifest (`counts.compute`)
and summed per method by `compare`, so methods are compared at the compute they spent, not only their steps.

Where tokens are counted: every engine call (`backends.LazyEngine`: prompts once per call, as one shared prefill,
and each distinct completion), every training run (`training.train_sft`: the tokens of the examples its optimiser
steps saw), and the methods that sample or train inside TRL (they call `record` themselves). A sharded stage's chunks
carry their own account (`runs.RunDir.sharded`), so a resumed stage, a `--shard` job or a rank's chunks are counted
once, by whoever did them.

FLOPs follow Kaplan et al. (2020, Table 1): a token read forward costs 2N + 2 n_layer d_attn n_ctx, where N counts
the parameters that multiply it (every layer and the output head; not the input embedding, a lookup) and n_ctx is
the number of tokens it attends to; backward costs twice the forward, so a trained token costs 3x. A token trained
through frozen weights (LoRA) skips their weight gradients: 2N less (forward 2N + activation gradients 2N), plus its
adapter's n_a parameters trained in full (6 n_a); `record(..., adapter_params=n_a)` counts it so. Padding and
recomputation are not counted: this is the work the method needs, not what a given kernel spent.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

KINDS = ("generated", "prefilled", "scored", "trained")


@dataclass
class Account:
    """Token counts by kind, and for each the sum over its tokens of the context they attend to (`n_ctx`)."""

    generated: int = 0
    prefilled: int = 0
    scored: int = 0
    trained: int = 0
    generated_context: int = 0
    prefilled_context: int = 0
    scored_context: int = 0
    trained_context: int = 0
    trained_frozen: int = 0  # of the trained tokens, those trained through frozen weights (LoRA)
    trained_adapter: int = 0  # the sum over those tokens of their adapter's parameter count

    def add(self, other: Account) -> Account:
        return Account(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def minus(self, other: Account) -> Account:
        return Account(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Account:
        return cls(**{f.name: int((d or {}).get(f.name, 0)) for f in fields(cls)})


def sequence_context(prefix: int, new: int) -> int:
    """Sum of the contexts of `new` tokens read after `prefix` others (causal attention): the i-th new token attends
    to prefix + i tokens (itself included), so the sum is new * prefix + new (new + 1) / 2."""
    return new * prefix + new * (new + 1) // 2


def forward_flops(tokens: int, context: int, n_params: int, n_layers: int, d_attn: int) -> float:
    """FLOPs of reading `tokens` forward whose contexts sum to `context` (Kaplan et al. 2020, Table 1):
    2 N per token for the matmuls, and 2 n_layer d_attn per attended token for QK^T and the weighted sum of V."""
    return 2.0 * n_params * tokens + 2.0 * n_layers * d_attn * context


def account_flops(account: Account, n_params: int, n_layers: int, d_attn: int) -> dict:
    """FLOPs by kind: generated, prefilled and scored tokens are read forward once; a trained token forward and
    backward (3x the forward), less the weight gradients of frozen weights (2N per LoRA token) plus the adapter's
    forward and backward (6 per adapter parameter)."""
    out = {kind: forward_flops(getattr(account, kind), getattr(account, f"{kind}_context"), n_params, n_layers, d_attn)
           for kind in KINDS}
    out["trained"] = 3.0 * out["trained"] - 2.0 * n_params * account.trained_frozen + 6.0 * account.trained_adapter
    out["total"] = sum(out[k] for k in KINDS)
    return out


# --- the running process's ledger (pipeline.run_stage takes it around each stage) ----------------------------------

_ledger = Account()


def record(kind: str, tokens: int, context: int, adapter_params: int | None = None) -> None:
    """Count `tokens` of one kind whose contexts sum to `context` (see `sequence_context`). `adapter_params`: trained
    tokens of a LoRA run (frozen weights), with its adapter's trainable parameter count; None: full fine-tuning."""
    global _ledger
    if kind not in KINDS:
        raise ValueError(f"unknown compute kind {kind!r}: {', '.join(KINDS)}")
    if adapter_params is not None and kind != "trained":
        raise ValueError(f"adapter_params counts trained tokens, not {kind!r} ones")
    lora = {} if adapter_params is None else {"trained_frozen": int(tokens),
                                              "trained_adapter": int(tokens) * int(adapter_params)}
    _ledger = _ledger.add(Account(**{kind: int(tokens), f"{kind}_context": int(context)}, **lora))


def record_sequences(kind: str, prefixes: list[int], lengths: list[int], adapter_params: int | None = None) -> None:
    """Count sequences of `lengths` new tokens, each read after its `prefixes` tokens."""
    record(kind, sum(lengths), sum(sequence_context(p, n) for p, n in zip(prefixes, lengths, strict=True)),
           adapter_params)


def add(account: Account) -> None:
    """Count work done elsewhere: the chunks of a sharded stage, merged (`runs.RunDir.sharded`)."""
    global _ledger
    _ledger = _ledger.add(account)


@contextlib.contextmanager
def set_apart() -> Iterator[list[Account]]:
    """The work done inside the block, kept out of the ledger and given to the caller (a sharded chunk stores it with
    its shard, so it is counted once at the merge, whichever process did it)."""
    global _ledger
    before, _ledger = _ledger, Account()
    box: list[Account] = []
    try:
        yield box
    finally:
        box.append(_ledger)
        _ledger = before


def take() -> Account:
    """The ledger's count since the last take, and a fresh ledger."""
    global _ledger
    out, _ledger = _ledger, Account()
    return out


@functools.lru_cache(maxsize=8)
def model_shape(model_dir: str) -> dict:
    """N (parameters that multiply each token: not the input embedding, a lookup; the output head counts even when
    tied to it), n_layer and d_attn of a causal LM, from its config alone (the model is built on the meta device).
    An adapter folder (LoRA): its base's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from varreason.models.lora import config_folder

    config = AutoConfig.from_pretrained(config_folder(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once, as the embedding
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    n_params = total if tied else total - embedding
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else config.hidden_size)
    return {"n_params": int(n_params), "n_layers": int(config.num_hidden_layers),
            "d_attn": int(heads * head_dim if heads else config.hidden_size)}


def summary(account: Account, shape: dict | None) -> dict:
    """The manifest's `compute` entry of a stage: token counts, context sums and FLOPs (when the shape is known)."""
    out = account.to_dict()
    if shape:
        out["flops"] = account_flops(account, **shape)
        out["model_shape"] = shape
    return out


def combine(summaries: list[dict | None]) -> dict:
    """Several stages' `summary` entries as one (a method's account): tokens, contexts and FLOPs summed."""
    present = [s for s in summaries if s]
    total = Account()
    for s in present:
        total = total.add(Account.from_dict(s))
    flops = {k: sum(s.get("flops", {}).get(k, 0.0) for s in present) for k in (*KINDS, "total")}
    return {**total.to_dict(), "flops": flops}


def steps_for_flops(target_flops: float, flops_per_example: float, examples_per_step: int) -> int:
    """Optimiser steps of SFT whose training FLOPs come closest to `target_flops` (at least one)."""
    if flops_per_example <= 0 or examples_per_step <= 0:
        raise ValueError("flops_per_example and examples_per_step must be positive")
    return max(1, round(target_flops / (flops_per_example * examples_per_step)))
