"""Shared fixtures: a tiny from-scratch model + locally trained tokenizer (no hub, no download)."""

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def toy_problems(n: int = 200, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, trace, answer) triples of two-number sums."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append((f"{a}+{b}=?", f"{a}+{b}={a + b}", str(a + b)))
    return out


def sum_tokenizer(special: list[str]):
    """A BPE tokenizer (vocabulary 200) trained here on ChatML sums in the reasoning format; eos <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = []
    for _ in range(500):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        corpus.append(f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<think>{a} + {b} = {a + b}</think>"
                      f"<answer>{a + b}</answer><|im_end|>")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=special, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from varreason.config import FormatConfig, ModelConfig
    from varreason.models.tiny import build_tiny
    from varreason.templates import Templates

    fmt = FormatConfig()
    t = Templates(fmt)
    corpus = [t.prompt(q) + t.completion(z, y, eos=False) for q, z, y in toy_problems()]
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    return build_tiny(cfg, fmt, corpus, tmp_path_factory.mktemp("tiny") / "base")


# The files that take minutes, first and in this order: pytest-xdist (`make test`: --dist loadfile
# --no-loadscope-reorder) hands whole files to the workers in collection order, so the longest start first and the two
# paper-recipe files land on different workers (its vLLM file after the vLLM backend file, by when pi0 and q are trained).
SLOW_FIRST = ["test_paper_recipe.py", "test_backend_vllm.py", "test_paper_recipe_vllm.py", "test_distributed.py",
              "test_kill_resume.py", "test_disk.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its order


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun group's rendezvous (test workers run side by side)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
