"""Our attention implementations for CPU, registered with transformers' AttentionInterface.

`load_model` sets SDPA_GQA on CPU (grouped-query heads under a padding mask); `train_sft` sets VARLEN_SDPA while it
trains on packed rows (per-example attention). Both are measured in docs/performance.md.
"""

from __future__ import annotations

import itertools

import torch

SDPA_GQA = "varreason_sdpa_gqa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, with grouped-query attention left to torch's kernel when there is a mask.

    Why: under a padding mask (every batched generate and scoring call) transformers' sdpa copies each key/value
    head `num_key_value_groups` times (`repeat_kv`), the whole KV cache at every decode step; on CPU that copy took
    62% of a sampling batch of 512 (docs/performance.md), while torch's CPU kernel takes the mask and
    `enable_gqa=True` together at a tenth of the time, with the same output. Set by `load_model` on CPU.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is None or key.shape[1] == query.shape[1] or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"),
        enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


VARLEN_SDPA = "varreason_varlen_sdpa"


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None,
                          **kwargs):
    """Causal attention of a packed row, one `scaled_dot_product_attention` per example.

    Why our own: on CPU, transformers' packed path (sdpa with the block-diagonal mask it builds from `position_ids`)
    computes attention over the whole row, (sum n)^2, with a dense mask, which cost more than the packing saved
    (measured in docs/performance.md); flash-attention's varlen kernels, which HF uses on GPUs, do not run on CPU.
    Here the cost is sum n^2. Registered as an attention implementation, set only while `train_sft` trains on
    packed rows (no attention mask, `position_ids` restarting at 0 for each example).
    """
    length = query.shape[2]
    if (position_ids is None or attention_mask is not None or query.shape[0] != 1 or key.shape[2] != length
            or position_ids.shape[-1] != length or int(position_ids[0, 0]) != 0):
        raise ValueError("varlen attention takes one packed row: position_ids restarting at 0 for each example, "
                         "no attention mask, no KV cache")
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [length]
    window = kwargs.get("sliding_window")
    gqa = key.shape[1] != query.shape[1]
    out = []
    for a, b in itertools.pairwise(starts):
        if b == a:
            continue
        mask = None
        if window is not None and b - a > window:  # a sliding-window layer: key j is seen from i when i - j < window
            i = torch.arange(b - a, device=query.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        out.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], attn_mask=mask, is_causal=mask is None,
            scale=scaling, dropout_p=dropout, enable_gqa=gqa))
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make our attention implementations known to transformers (idempotent; `load_model` calls it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(SDPA_GQA, sdpa_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SDPA_GQA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, lambda *args, **kwargs: None)  # no mask: rows are split
