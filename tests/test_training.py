"""Weighted SFT on the HF Trainer: the loss plumbing across micro-batches, learning, resume."""

import pytest
import torch
from conftest import toy_problems
from transformers import TrainerCallback, TrainingArguments

from varreason.config import FormatConfig, SFTConfig
from varreason.models import load_model, load_tokenizer
from varreason.objectives import constant_normalizer, token_nll, weighted_sft_loss
from varreason.templates import Templates
from varreason.training import WeightedCollator, WeightedSFTTrainer, tokenize_examples, train_sft


def _rows(tok, n=8, weights=None):
    t = Templates(FormatConfig(), tok)
    rows = [{"prompt": t.prompt(q), "completion": t.completion(z, y), "weight": 1.0} for q, z, y in toy_problems(n)]
    for r, w in zip(rows, weights or []):
        r["weight"] = w
    return rows


@pytest.mark.parametrize("normalizer", ["constant", "tokens"])
def test_micro_batches_sum_to_the_step_loss(tiny_model_dir, tmp_path, normalizer):
    """Two micro-batches of 2 (gradient accumulation) give exactly the loss of one batch of 4."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    data = tokenize_examples(_rows(tok, 4, [0.5, 2.0, 1.0, 0.0]), tok, 128)
    collate = WeightedCollator(tok.pad_token_id)
    constant = constant_normalizer([3, 5, 7, 9], 4)  # any data-set constant
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                             per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = WeightedSFTTrainer(model=model, args=args, normalizer=normalizer, constant=constant,
                                 data_collator=collate, train_dataset=data.features)
    micro = [collate(data.features[:2]), collate(data.features[2:])]
    full = collate(data.features)
    n_items = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
    assert n_items.item() == sum(data.supervised_tokens)
    with torch.no_grad():
        parts = [trainer.compute_loss(model, dict(mb), num_items_in_batch=n_items) for mb in micro]
        nll, mask = token_nll(model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits,
                              full["labels"])
        norm = constant if normalizer == "constant" else mask.sum()
        expected = weighted_sft_loss(nll, mask, full["weight"], norm)
    assert sum(p.item() for p in parts) == pytest.approx(expected.item(), rel=1e-5)
    assert trainer.loss_is_scaled_for_ga  # the Trainer must not divide by the accumulation steps again


def test_prompt_tokens_are_not_supervised(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    rows = _rows(tok, 1)
    f = tokenize_examples(rows, tok, 128).features[0]
    n_prompt = len(tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in f["labels"][:n_prompt])
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:]
    assert f["input_ids"][-1] == tok.eos_token_id


def test_bad_rows_are_input_errors(tiny_model_dir):
    from varreason.errors import InputError

    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(InputError, match="row 1"):
        tokenize_examples([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": ""}], tok, 64)
    with pytest.raises(InputError, match="weight"):
        tokenize_examples([{"prompt": "a", "completion": "b", "weight": float("nan")}], tok, 64)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_train_learns_and_resumes(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rows = _rows(tok, 64)
    cfg = SFTConfig(learning_rate=5e-3, max_steps=8, per_device_train_batch_size=16, save_steps=4,
                    logging_steps=1, report_to=[], warmup_ratio=0.0)
    out = tmp_path / "sft"
    with pytest.raises(KeyboardInterrupt):  # killed after step 6; the checkpoint of step 4 is on disk
        train_sft(tiny_model_dir, rows, cfg, out, callbacks=[_StopAt(6)])
    assert not out.exists() and (tmp_path / "sft.work" / "checkpoint-4").exists()
    stats = train_sft(tiny_model_dir, rows, cfg, out)
    assert stats["resumed_from"].endswith("checkpoint-4")
    assert stats["optimizer_steps"] == 8
    assert (out / "model.safetensors").exists() and not (tmp_path / "sft.work").exists()
    losses = [loss for _, loss in stats["loss_history"]]
    assert losses[-1] < losses[0]
    before, after = load_model(tiny_model_dir), load_model(out)
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)


def test_length_grouped_sampler_batches_similar_lengths_in_random_order():
    from varreason.training import GlobalBatchSampler

    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    sampler = GlobalBatchSampler(len(lengths), 8, seed=3, lengths=lengths, mega_batches=4)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(200)) and sorted(second) == list(range(200))  # every example once
    assert first != second  # a new order each epoch
    spread = [max(lengths[i] for i in first[j:j + 8]) - min(lengths[i] for i in first[j:j + 8])
              for j in range(0, 200, 8)]
    import random

    shuffled = random.Random(0).sample(range(200), 200)
    random_spread = [max(lengths[i] for i in shuffled[j:j + 8]) - min(lengths[i] for i in shuffled[j:j + 8])
                     for j in range(0, 200, 8)]
    assert sum(spread) < 0.4 * sum(random_spread)  # within a batch lengths are close: little padding
    maxima = [max(lengths[i] for i in first[j:j + 8]) for j in range(0, 200, 8)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)  # no long-to-short sweep


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
@pytest.mark.parametrize("normalizer", ["constant", "tokens"])
def test_packed_rows_give_the_per_example_losses_and_gradients_of_padded_batches(tiny_model_dir, tmp_path,
                                                                                 normalizer, attention):
    """PackedCollator (one row, position_ids restarting, no mask) against WeightedCollator (right padding): the
    same per-example NLL sums and the same gradients of the weighted loss, under transformers' sdpa (the
    block-diagonal mask it builds) and under our per-example attention (what train_sft uses). If a packed row were
    attended as one sequence, later examples would attend to earlier ones and their losses would differ."""
    import itertools

    from varreason.models.attention import VARLEN_SDPA
    from varreason.training import PackedCollator

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    padded_model = packed_model = model
    if attention == "varlen":
        packed_model = load_model(tiny_model_dir)
        packed_model.set_attn_implementation(VARLEN_SDPA)
    rows = _rows(tok, 5, [0.5, 2.0, 1.0, 0.0, 1.5])
    rows[1]["completion"] = "1+1=2, 2+2=4, and so on " + rows[1]["completion"]  # lengths differ: padding in one
    data = tokenize_examples(rows, tok, 256)
    padded, packed = WeightedCollator(tok.pad_token_id)(data.features), PackedCollator()(data.features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in data.features))
    assert padded["input_ids"].numel() > packed["input_ids"].numel()  # the padding packing saves

    def per_example_and_grads(batch):
        model = padded_model if "attention_mask" in batch else packed_model
        model.zero_grad()
        batch = dict(batch)
        labels = batch.pop("labels")
        weights = batch.pop("token_weight")[:, 1:] if "token_weight" in batch else batch.pop("weight")
        nll, mask = token_nll(model(**batch, use_cache=False).logits, labels)
        if "position_ids" in batch:  # split the packed row back into its examples
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [labels.shape[1]]
            sums = torch.stack([(nll * mask)[0, a: b - 1].sum() for a, b in itertools.pairwise(starts)])
        else:
            sums = (nll * mask).sum(-1)
        norm = constant_normalizer(data.supervised_tokens, 5) if normalizer == "constant" else mask.sum()
        weighted_sft_loss(nll, mask, weights, norm).backward()
        return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    sums_padded, grads_padded = per_example_and_grads(padded)
    sums_packed, grads_packed = per_example_and_grads(packed)
    assert torch.allclose(sums_packed, sums_padded, rtol=1e-5, atol=1e-5), (sums_packed, sums_padded)
    assert sums_padded.min() > 0
    assert grads_packed.keys() == grads_padded.keys()
    for name in grads_padded:
        assert torch.allclose(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-6), name


def test_train_sft_padding_free_runs_and_matches_the_padded_loss(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rows = _rows(tok, 16)
    stats = {}
    for packed in (False, True):
        cfg = SFTConfig(max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
                        logging_steps=1, save_steps=100, group_by_length=False, padding_free=packed)
        stats[packed] = train_sft(tiny_model_dir, rows, cfg, tmp_path / f"m{packed}", seed=0)
    first = [stats[p]["loss_history"][0][1] for p in (False, True)]
    assert first[1] == pytest.approx(first[0], rel=1e-4)  # the same first step: same batch, same weights
    assert (tmp_path / "mTrue" / "config.json").exists()


def test_varlen_attention_refuses_rows_that_are_not_packed():
    from varreason.models.attention import varlen_sdpa_attention

    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="packed row"):
        varlen_sdpa_attention(None, q, q, q, attention_mask=torch.ones(1, 4), position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="packed row"):
        varlen_sdpa_attention(None, q, q, q, attention_mask=None)
