"""HF backend: chunked scoring equals the direct computation; batched sampling is deterministic and well-formed."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import sum_tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

from varreason.backends import Generation, Generator, HFGenerator, HFScorer, Scorer, token_logprobs_chunked

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>", "<|pad|>"]
PROMPTS = ["What is 3 + 4?", "<|im_start|>user\nWhat is 12 + 30 + 7?<|im_end|>\n<think>", "Q: 5"]


@pytest.fixture(scope="module")
def tokenizer():
    return sum_tokenizer(SPECIAL)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         initializer_range=0.2)  # peaked logits: greedy argmax far from ties
    return Qwen3ForCausalLM(config).eval()


def direct_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logp[positions, torch.tensor(completion)]


# ---------------------------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_core_equals_log_softmax_gather(model, chunk_size):
    ids = torch.randint(0, model.config.vocab_size, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0]
        expected = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(
            -1, ids[0, 1:, None])[:, 0]
        got = token_logprobs_chunked(hidden[:-1], model.get_output_embeddings(), ids[0, 1:], chunk_size)
    assert got.dtype == torch.float32 and got.shape == (22,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_chunked_core_softcap_and_scale():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden, targets = torch.randn(9, 8), torch.randint(0, 50, (9,))
    with torch.no_grad():
        logits = torch.tanh(head(hidden) * 0.5 / 3.0) * 3.0
        expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
        got = token_logprobs_chunked(hidden, head, targets, 4, logit_scale=0.5, softcap=3.0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_chunked_core_differentiable_path_matches():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden, targets = torch.randn(9, 8, requires_grad=True), torch.randint(0, 50, (9,))
    got = token_logprobs_chunked(hidden, head, targets, 4, softcap=3.0)
    with torch.no_grad():
        expected = token_logprobs_chunked(hidden, head, targets, 2, softcap=3.0)  # in-place path
    torch.testing.assert_close(got.detach(), expected, atol=1e-6, rtol=0)
    got.sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("chunk_size,batch_size", [(1, 2), (5, 16), (4096, 3)])
def test_scorer_batch_of_different_lengths_equals_direct(model, chunk_size, batch_size):
    g = torch.Generator().manual_seed(2)
    vocab = model.config.vocab_size
    lengths = [(1, 1), (5, 12), (17, 3), (2, 30), (9, 0), (4, 9)]  # (prompt, completion); one empty completion
    prompts = [torch.randint(0, vocab, (p,), generator=g).tolist() for p, _ in lengths]
    completions = [torch.randint(0, vocab, (c,), generator=g).tolist() for _, c in lengths]
    scorer = HFScorer(model, batch_size=batch_size, chunk_size=chunk_size)
    scores = scorer.score(prompts, completions, progress=False)
    assert [len(s) for s in scores] == [c for _, c in lengths]
    for p, c, s in zip(prompts, completions, scores):
        if c:
            torch.testing.assert_close(torch.tensor(s), direct_logprobs(model, p, c), atol=1e-5, rtol=0)


def test_scorer_refuses_head_it_cannot_reproduce(tokenizer):
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Qwen3ForCausalLM(config)
    model.config.final_logit_softcapping = 0.1  # Qwen3's forward ignores it: our scores would differ from model()
    with pytest.raises(RuntimeError, match="differently"):
        HFScorer(model).score([[1, 2]], [[3, 4]], progress=False)


def test_scorer_rejects_bad_input(model):
    scorer = HFScorer(model)
    with pytest.raises(ValueError):
        scorer.score([[1]], [[2], [3]], progress=False)
    with pytest.raises(ValueError, match="empty"):
        scorer.score([[]], [[2]], progress=False)
    assert scorer.score([[1]], [[]], progress=False) == [[]]


# ------------------------------------------------------------------------------------------------------------- generation


def test_protocols(model, tokenizer):
    assert isinstance(HFGenerator(model, tokenizer), Generator)
    assert isinstance(HFScorer(model, tokenizer), Scorer)


def test_special_tokens_in_prompts_encode_to_single_ids(tokenizer):
    ids = tokenizer("<|im_start|>user<|im_end|><think>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tokenizer.convert_tokens_to_ids(
        "<think>") and tokenizer.eos_token_id in ids


def test_shape_and_fields(model, tokenizer):
    out = HFGenerator(model, tokenizer, batch_size=5).generate(PROMPTS, n=4, max_new_tokens=6, temperature=1.0,
                                                                progress=False)
    assert len(out) == len(PROMPTS) and all(len(row) == 4 for row in out)
    for row in out:
        for gen in row:
            assert isinstance(gen, Generation)
            assert gen.stop_reason in {"stop", "eos", "length"} and gen.finished == (gen.stop_reason != "length")
            assert 0 < len(gen.token_ids) <= 6 or gen.stop_reason == "eos"
            assert tokenizer.pad_token_id not in gen.token_ids or gen.stop_reason == "length"
            assert gen.text == tokenizer.decode(gen.token_ids, skip_special_tokens=False)


def test_deterministic_given_seed_and_varies_with_seed(model, tokenizer):
    gen = HFGenerator(model, tokenizer, batch_size=4)
    kwargs = {"n": 3, "max_new_tokens": 8, "temperature": 1.0, "progress": False}
    a = gen.generate(PROMPTS, seed=7, **kwargs)
    torch.manual_seed(123)  # the global RNG state must not matter
    b = gen.generate(PROMPTS, seed=7, **kwargs)
    c = gen.generate(PROMPTS, seed=8, **kwargs)
    ids = lambda out: [[g.token_ids for g in row] for row in out]
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({tuple(t) for t in ids(a)[0]}) > 1  # the n samples of one prompt differ


def test_greedy_left_padding_matches_alone(model, tokenizer):
    gen = HFGenerator(model, tokenizer, batch_size=8)
    batched = gen.generate(PROMPTS, n=2, max_new_tokens=10, temperature=0.0, progress=False)
    for prompt, row in zip(PROMPTS, batched):
        alone = gen.generate([prompt], max_new_tokens=10, temperature=0.0, progress=False)[0][0]
        assert [g.token_ids for g in row] == [alone.token_ids, alone.token_ids]


def test_length_capped_output(model, tokenizer):
    gen = HFGenerator(model, tokenizer)
    gen.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # a token the greedy path does not hit
    out = gen.generate(PROMPTS, max_new_tokens=5, temperature=0.0, progress=False)
    for row in out:
        assert row[0].stop_reason == "length" and not row[0].finished and len(row[0].token_ids) == 5


def test_eos_is_excluded(model, tokenizer):
    gen = HFGenerator(model, tokenizer)
    full = gen.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, progress=False)[0][0].token_ids
    k = next(k for k in range(1, len(full)) if full[k] not in full[:k])  # first token that is new at position k
    gen.eos_token_id = full[k]  # pretend that token is eos
    out = gen.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, progress=False)[0][0]
    assert out.stop_reason == "eos" and out.finished
    assert out.token_ids == full[:k] and out.text == tokenizer.decode(full[:k], skip_special_tokens=False)


def test_stop_strings_cut_text_and_tokens(model, tokenizer):
    gen = HFGenerator(model, tokenizer)
    full = gen.generate(PROMPTS[:1], max_new_tokens=20, temperature=0.0, progress=False)[0][0]
    # a stop string that ends in the middle of the greedy text: its characters 6..9
    stop = full.text[6:9]
    assert stop
    cut = full.text.find(stop) + len(stop)
    out = gen.generate(PROMPTS[:1], max_new_tokens=20, temperature=0.0, stop=["never-appears", stop],
                       progress=False)[0][0]
    assert out.stop_reason == "stop" and out.finished
    assert out.text == full.text[:cut] and out.text.endswith(stop)
    k = len(out.token_ids)
    assert out.token_ids == full.token_ids[:k]  # a prefix of the unstopped run ...
    assert tokenizer.decode(full.token_ids[:k]).startswith(out.text)  # ... that contains the stop string ...
    assert not tokenizer.decode(full.token_ids[: k - 1]).startswith(out.text)  # ... and is the shortest one


def test_scoring_sampled_completion_is_finite(model, tokenizer):
    out = HFGenerator(model, tokenizer).generate(PROMPTS, n=2, max_new_tokens=10, temperature=1.0, top_p=0.9,
                                                 progress=False)
    prompt_ids = tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    pairs = [(prompt_ids[i], g.token_ids) for i, row in enumerate(out) for g in row]
    scores = HFScorer(model, tokenizer, chunk_size=4).score([p for p, _ in pairs], [c for _, c in pairs],
                                                           progress=False)
    for (_, c), s in zip(pairs, scores):
        assert len(s) == len(c) and all(math.isfinite(x) and x <= 0 for x in s)


def test_greedy_copies_and_bad_arguments(model, tokenizer):
    gen = HFGenerator(model, tokenizer)
    row = gen.generate(PROMPTS[:1], n=3, max_new_tokens=4, temperature=0.0, progress=False)[0]
    assert row[0].token_ids == row[1].token_ids == row[2].token_ids and row[0].token_ids is not row[1].token_ids
    assert gen.generate([], progress=False) == []
    with pytest.raises(ValueError):
        gen.generate([""], progress=False)
    with pytest.raises(ValueError):
        gen.generate(PROMPTS, top_p=0.0, progress=False)
    with pytest.raises(TypeError):
        gen.generate("a prompt", progress=False)


def test_sampling_draws_from_the_tempered_top_p_distribution(model, tokenizer):
    """The first sampled token of many copies follows softmax(logits / T) restricted to the top-p set, computed here
    directly from the model (an independent computation of the distribution the decode loop must sample)."""
    temperature, top_p, n = 1.5, 0.9, 3000
    gen = HFGenerator(model, tokenizer, batch_size=1000)
    out = gen.generate(PROMPTS[:1], n=n, max_new_tokens=1, temperature=temperature, top_p=top_p, seed=3,
                       progress=False)[0]
    counts = torch.bincount(torch.tensor([g.token_ids[0] if g.token_ids else tokenizer.eos_token_id for g in out]),
                            minlength=model.config.vocab_size).float()
    ids = tokenizer(PROMPTS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p = torch.softmax(model(ids).logits[0, -1].float() / temperature, dim=-1)
    sorted_p, order = p.sort(descending=True)
    inside = torch.zeros_like(p, dtype=torch.bool)
    inside[order[(sorted_p.cumsum(0) - sorted_p) < top_p]] = True  # the smallest set whose mass reaches top_p
    expected = torch.where(inside, p, 0.0) / p[inside].sum()
    assert counts[~inside].sum() == 0  # nothing outside the nucleus
    assert (counts / n - expected).abs().max() < 4 * (expected * (1 - expected) / n).sqrt().max() + 1e-3
    assert (counts > 0).sum() > 1  # the test is not a single forced token


def test_greedy_decode_loop_equals_transformers_generate(model, tokenizer):
    """Our decode loop (finished rows leave the batch) against transformers' `generate` on the same left-padded
    batch: the same greedy tokens for every row, up to eos."""
    gen = HFGenerator(model, tokenizer, batch_size=8)
    ours = gen.generate(PROMPTS, max_new_tokens=12, temperature=0.0, progress=False)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([[gen.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.no_grad():
        theirs = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                eos_token_id=gen.eos_token_id, pad_token_id=gen.pad_token_id)[:, width:].tolist()
    for row, expected in zip(ours, theirs):
        cut = expected.index(gen.eos_token_id) if gen.eos_token_id in expected else len(expected)
        assert row[0].token_ids == expected[:cut]


def test_rows_that_finish_leave_the_batch_without_changing_the_others(model, tokenizer):
    """A token the greedy paths reach at different steps plays eos: rows then finish mid-batch and leave it (their
    cache rows are dropped); every row must still equal its prompt decoded alone."""
    gen = HFGenerator(model, tokenizer, batch_size=8)
    alone = [gen.generate([p], max_new_tokens=12, temperature=0.0, progress=False)[0][0].token_ids for p in PROMPTS]
    firsts = {}
    for t in {t for ids in alone for t in ids}:
        firsts[t] = [ids.index(t) if t in ids else 12 for ids in alone]
    eos = next(t for t, f in firsts.items() if len(set(f)) > 1 and min(f) < 11)  # rows end at different steps
    gen.eos_token_id = eos
    batched = gen.generate(PROMPTS, max_new_tokens=12, temperature=0.0, progress=False)
    for prompt, ids, row in zip(PROMPTS, alone, batched):
        expected = ids[: ids.index(eos)] if eos in ids else ids
        assert row[0].token_ids == expected, prompt
        assert row[0].stop_reason == ("eos" if eos in ids else "length")


def test_sampled_copies_share_one_prefill(model, tokenizer):
    """n copies of a prompt are decoded from one prefill whose cache is repeated: at a temperature near 0 every copy
    must be the greedy path, for every prompt of the batch, over several steps on the repeated cache."""
    gen = HFGenerator(model, tokenizer, batch_size=9)
    greedy = gen.generate(PROMPTS, max_new_tokens=10, temperature=0.0, progress=False)
    cold = gen.generate(PROMPTS, n=3, max_new_tokens=10, temperature=1e-4, seed=5, progress=False)
    for g, row in zip(greedy, cold):
        assert len(g[0].token_ids) > 1
        assert [c.token_ids for c in row] == [g[0].token_ids] * 3


def test_caches_that_cannot_drop_rows_take_the_plain_path(model, tokenizer, monkeypatch):
    """For a cache whose layers cannot be cut or repeated (linear-attention hybrids), copies are prefilled apiece and
    finished rows ride along: the same outputs as the pruning path (forced here by hiding the plain layer type)."""
    from varreason.backends import hf

    gen = HFGenerator(model, tokenizer, batch_size=9)
    kwargs = {"n": 3, "max_new_tokens": 10, "temperature": 1e-4, "seed": 5, "progress": False}
    pruned = gen.generate(PROMPTS, **kwargs)
    monkeypatch.setattr(hf, "DynamicLayer", type("NotACacheLayer", (), {}))
    plain = gen.generate(PROMPTS, **kwargs)
    assert [[g.token_ids for g in row] for row in plain] == [[g.token_ids for g in row] for row in pruned]
