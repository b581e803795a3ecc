"""The math of the method as pure functions on tensors: no I/O, no models.

This issue's part: the weighted SFT loss and its normalizers. The importance-weight estimators land here next.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of next-token targets and the mask of supervised positions.

    logits [B, T, V] predict token t+1 at position t; labels [B, T] hold IGNORE_INDEX where nothing is learned.
    Returns (nll [B, T-1], mask [B, T-1]) in float32.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.clamp_min(0).reshape(-1), reduction="none"
    ).view_as(shift_labels)
    return nll * mask, mask.float()


def weighted_sft_loss(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, normalizer: float | torch.Tensor):
    """`sum_e w_e * sum_t nll_{e,t} / C`: the paper's weighted SFT (Algorithm 1, line 16).

    `normalizer` C is either a data-set constant (Dr. SFT) or the number of supervised tokens in the optimiser
    step (the usual token mean); see `constant_normalizer`.
    """
    per_example = (nll * mask).sum(dim=-1)
    return (weights.to(per_example.dtype) * per_example).sum() / normalizer


def constant_normalizer(supervised_tokens_per_example: list[int], examples_per_step: int) -> float:
    """Dr. SFT's C: mean supervised tokens per example x examples per optimiser step.

    With a constant C every token's gradient weight is the same whichever examples share its batch, so long
    traces are not down-weighted by a per-batch token mean (the released recipe's `constant_loss_normalizer`).
    """
    if not supervised_tokens_per_example or examples_per_step < 1:
        raise ValueError("constant normalizer needs at least one example and examples_per_step >= 1")
    mean_tokens = sum(supervised_tokens_per_example) / len(supervised_tokens_per_example)
    return float(mean_tokens * examples_per_step)
