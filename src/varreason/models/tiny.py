"""A tiny Qwen3 and a tokenizer trained here, offline: the model of the embedded demo and of the tests.

The factory writes an ordinary HF model folder (config.json, model.safetensors, tokenizer.json, chat template),
so every later stage loads it through the same `from_pretrained` path as a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from varreason.config import FormatConfig, ModelConfig
from varreason.models import save_pretrained

# ChatML, as Qwen uses; the {% generation %} block lets `return_assistant_tokens_mask` find the assistant part.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ message['content'] }}"
    "<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BASE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def train_tokenizer(texts: list[str], fmt: FormatConfig, vocab_size: int = 1024):
    """A byte-level BPE trained here, offline, with digits split one by one (as Qwen does: arithmetic needs it)
    and the format markers as single special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    markers = [fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close]
    special = BASE_SPECIAL_TOKENS + [m for m in markers if m not in BASE_SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token=None,
        additional_special_tokens=special[1:],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    return hf


def build_tiny_model(cfg: ModelConfig, tokenizer, seed: int = 0):
    """A Qwen3-architecture causal LM built from a config (no download), sized by `cfg`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        rope_theta=10000.0, torch_dtype="float32",
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny(cfg: ModelConfig, fmt: FormatConfig, corpus: list[str], out_dir: str | Path, seed: int = 0) -> Path:
    """Train a tokenizer on `corpus`, build the tiny model, save both as one HF folder; return its path."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, fmt, cfg.vocab_size)
    model = build_tiny_model(cfg, tokenizer, seed)
    save_pretrained(model, tokenizer, out_dir)
    return out_dir
