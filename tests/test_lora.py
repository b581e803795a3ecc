"""LoRA (peft) for the training stages: only the adapter trains, merged and adapter folders give the base + adapter's
log-probs in every engine, a killed run resumes, the config carries `lora` without changing old hashes, the compute
account counts a frozen base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import sum_tokenizer, toy_problems
from safetensors.torch import load_file
from test_training import _StopAt
from transformers import AutoModelForCausalLM, TrainerCallback

from varreason import compute
from varreason.config import FormatConfig, LoraConfig, SFTConfig, dump_config, field_help, load_config
from varreason.errors import InputError
from varreason.models import BASE_RECORD, base_of, is_model_folder, load_model, load_tokenizer
from varreason.models.lora import finish_saved, for_training, record_base, reference_pass
from varreason.templates import Templates
from varreason.training import train_sft


def sft(**lora) -> SFTConfig:
    return SFTConfig(learning_rate=1e-2, max_steps=4, per_device_train_batch_size=8, save_steps=50, logging_steps=1,
                     report_to=[], warmup_ratio=0.0, lora=LoraConfig(r=4, **lora))


def rows(tokenizer, n: int = 32) -> list[dict]:
    t = Templates(FormatConfig(), tokenizer)
    return [{"prompt": t.prompt(q), "completion": t.completion(z, y), "weight": 1.0} for q, z, y in toy_problems(n)]


@torch.no_grad()
def logprobs(model, ids: list[list[int]]) -> list[torch.Tensor]:
    """log p(token | prefix) of every token after the first, one sequence at a time."""
    out = []
    for seq in ids:
        x = torch.tensor([seq])
        out.append(torch.log_softmax(model.eval()(input_ids=x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0])
    return out


def largest_gap(a: list, b: list) -> float:
    """The largest difference between two sets of per-token log-probs (tensors or lists)."""
    return max((torch.as_tensor(x) - torch.as_tensor(y)).abs().max().item() for x, y in zip(a, b, strict=True))


class Seen(TrainerCallback):
    """The trained model's parameters and which of them were trainable, at the end of training."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A run folder with its base model and an adapter trained on it (`lora.save: adapter`)."""
    root = tmp_path_factory.mktemp("lora") / "run"
    shutil.copytree(tiny_model_dir, root / "models" / "base")
    tokenizer = load_tokenizer(root / "models" / "base")
    seen = Seen()
    stats = train_sft(root / "models" / "base", rows(tokenizer), sft(save="adapter"), root / "models" / "lora",
                      callbacks=[seen])
    ids = [tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"] for r in rows(tokenizer, 4)]
    return SimpleNamespace(root=root, base=root / "models" / "base", adapter=root / "models" / "lora", seen=seen,
                           stats=stats, ids=ids)


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    """The run's adapter merged as `lora.save: merged` merges it."""
    folder = tmp_path_factory.mktemp("merged") / "lora"
    shutil.copytree(run.adapter, folder)
    finish_saved(folder, "merged")
    return folder


# --- training ---------------------------------------------------------------------------------------------------------

def test_only_the_adapter_trains_and_the_base_weights_stay_byte_identical(run):
    base = AutoModelForCausalLM.from_pretrained(run.base).state_dict()
    trained = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in run.seen.params.items()}
    assert run.seen.trainable and all("lora_" in n for n in run.seen.trainable)
    frozen = {n: p for n, p in trained.items() if "lora_" not in n}
    assert set(frozen) == set(base) - {"lm_head.weight"}  # (tied to the embedding: one parameter)
    assert all(torch.equal(p, base[n]) for n, p in frozen.items())
    assert any(p.abs().max() > 0 for n, p in trained.items() if "lora_B" in n)  # B starts at 0: the adapter moved
    saved = load_file(run.adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)


def test_the_adapter_folder_names_its_base_absolute_and_relative(run):
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run.base.resolve())
    assert json.loads((run.adapter / BASE_RECORD).read_text()) == {"relative_path": "../base"}
    assert is_model_folder(run.adapter) and not (run.adapter / "config.json").exists()
    assert (run.adapter / "tokenizer.json").exists()


def test_a_moved_run_folder_still_finds_its_base(run, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run.root, moved)
    assert base_of(moved / "models" / "lora") == str(moved / "models" / "base")  # the record, not the old path
    (moved / "models" / "lora" / BASE_RECORD).unlink()
    assert base_of(moved / "models" / "lora") == str(run.base.resolve())  # without it: adapter_config.json's path
    record_base(moved / "models" / "lora", "some-org/some-model")  # a hub id stays as it is, nothing recorded
    assert not (moved / "models" / "lora" / BASE_RECORD).exists()


def test_a_killed_lora_run_resumes_from_its_adapter_checkpoint(run, tmp_path):
    tokenizer = load_tokenizer(run.base)
    cfg = sft()
    cfg.save_steps = 2
    out = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):  # killed after step 3; the checkpoint of step 2 is on disk
        train_sft(run.base, rows(tokenizer), cfg, out, callbacks=[_StopAt(3)])
    checkpoint = tmp_path / "m.work" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
    stats = train_sft(run.base, rows(tokenizer), cfg, out)
    assert stats["resumed_from"].endswith("checkpoint-2") and stats["optimizer_steps"] == 4
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()  # merged by default
    straight = train_sft(run.base, rows(tokenizer), cfg, tmp_path / "straight")
    assert straight["resumed_from"] is None
    assert largest_gap(logprobs(load_model(out), run.ids), logprobs(load_model(tmp_path / "straight"), run.ids)) < 1e-5


def test_continuing_from_an_adapter_trains_that_adapter_on_its_base(run):
    model, adapter = for_training(str(run.adapter), LoraConfig(r=4))
    assert adapter is None and model.peft_config["default"].base_model_name_or_path == str(run.base)
    saved = load_file(run.adapter / "adapter_model.safetensors")
    mine = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(mine) == len(saved) and all("lora_" in n for n in mine)
    assert largest_gap(logprobs(model, run.ids), logprobs(load_model(run.adapter), run.ids)) < 1e-5
    with pytest.raises(InputError, match="rank 4 .* set this stage's lora.r 4"):
        for_training(str(run.adapter), LoraConfig(r=8))
    full, adapter = for_training(str(run.adapter), LoraConfig(r=0))  # full fine-tuning of the merged model
    assert adapter is None and all(p.requires_grad for p in full.parameters())


def test_a_fresh_adapter_is_the_trainers_to_add_and_disabling_it_is_the_reference(run):
    from peft import get_peft_model

    model, adapter = for_training(str(run.base), LoraConfig(r=4))
    assert adapter.r == 4 and adapter.target_modules == "all-linear" and adapter.task_type == "CAUSAL_LM"
    model = get_peft_model(model, adapter)
    assert not reference_pass(model)
    with model.disable_adapter():  # TRL's reference for a fresh adapter
        assert reference_pass(model)
    assert not reference_pass(load_model(run.base))


def test_full_fine_tuning_with_a_kl_reference_refuses_an_adapter_start(run):
    """TRL reloads the reference of a fully fine-tuned policy from the policy's folder name: it must be an ordinary
    folder (an adapter start would silently give the base as the reference, or fail deep inside TRL)."""
    with pytest.raises(InputError, match="KL reference"):
        for_training(str(run.adapter), LoraConfig(r=0), reference=True)
    for_training(str(run.base), LoraConfig(r=0), reference=True)  # an ordinary folder: fine
    for_training(str(run.adapter), LoraConfig(r=4), reference=True)  # an adapter: TRL's own "ref" copy


# --- loading ----------------------------------------------------------------------------------------------------------

def test_the_merged_folder_gives_the_log_probs_of_base_plus_adapter(run, merged):
    from peft import PeftModel

    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    assert not (merged / BASE_RECORD).exists()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.base), str(run.adapter))
    expected = logprobs(unmerged, run.ids)
    assert largest_gap(logprobs(AutoModelForCausalLM.from_pretrained(merged), run.ids), expected) < 1e-5
    assert largest_gap(logprobs(load_model(run.base), run.ids), expected) > 1e-3  # the adapter changes the model


def test_an_adapter_folder_loads_like_the_merged_one(run, merged):
    assert largest_gap(logprobs(load_model(run.adapter), run.ids), logprobs(load_model(merged), run.ids)) < 1e-5
    assert load_tokenizer(run.adapter).get_vocab() == load_tokenizer(run.base).get_vocab()
    compute.model_shape.cache_clear()
    assert compute.model_shape(str(run.adapter)) == compute.model_shape(str(run.base))  # N of the base


@pytest.fixture(scope="module")
def vllm_folders(tmp_path_factory):
    """A model vLLM's CPU attention runs (heads of 32), an adapter on it with random B, and the two merged."""
    from peft import get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("vllm-lora")
    tokenizer = sum_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>",
                               "</answer>", "<|pad|>"])
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                         initializer_range=0.2, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=256)
    Qwen3ForCausalLM(config).save_pretrained(root / "base")
    model = get_peft_model(Qwen3ForCausalLM.from_pretrained(root / "base"), for_training(str(root / "base"),
                                                                                        LoraConfig(r=4))[1])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(root / "adapter")
    for folder in ("base", "adapter"):
        tokenizer.save_pretrained(root / folder)
    record_base(root / "adapter", str(root / "base"))
    shutil.copytree(root / "adapter", root / "merged")
    finish_saved(root / "merged", "merged")
    return root, tokenizer


def test_vllm_scores_an_adapter_folder_as_the_merged_folder(vllm_folders):
    pytest.importorskip("vllm")
    from varreason.backends.hf import HFScorer
    from varreason.backends.vllm import VLLMEngine

    root, tokenizer = vllm_folders
    prompts = [tokenizer(f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<think>", add_special_tokens=False)
               ["input_ids"] for a, b in ((3, 4), (12, 30))]
    completions = [tokenizer(f"{a} + {b} = {a + b}</think><answer>{a + b}</answer>", add_special_tokens=False)
                   ["input_ids"] for a, b in ((3, 4), (12, 30))]
    merged = HFScorer(load_model(root / "merged")).score(prompts, completions, progress=False)
    base = HFScorer(load_model(root / "base")).score(prompts, completions, progress=False)
    engine = VLLMEngine(root / "adapter", kv_cache_gib=0.25, max_num_seqs=8)
    try:  # on the CPU a merged copy in a temporary folder (models.lora.merged_copy), removed at close
        assert engine.lora_request is None and engine._merged is not None and Path(engine._merged).is_dir()
        merged_copy = Path(engine._merged)
        served = engine.score(prompts, completions, progress=False)
    finally:
        engine.close()
    assert not merged_copy.exists()
    assert largest_gap(served, merged) < 1e-4
    assert largest_gap(served, base) > 1e-2  # vLLM applied the adapter


# --- config -----------------------------------------------------------------------------------------------------------

def test_lora_is_a_sub_section_of_every_training_section_from_the_command_line_and_yaml(tmp_path):
    origins: dict = {}
    cfg = load_config("smoke", [("final.lora.r", "8"), ("final.lora.save", "adapter"),
                                ("grpo.lora.target_modules", "q_proj,v_proj")], origins)
    assert (cfg.final.lora.r, cfg.final.lora.save, cfg.grpo.lora.target_modules) == (8, "adapter", ["q_proj", "v_proj"])
    assert cfg.initial.lora.r == 0 and origins["final.lora.r"] == "command line"
    text = dump_config(cfg, origins)
    assert "  lora:\n    r: 8  # command line\n" in text
    (tmp_path / "mine.yaml").write_text(text)
    assert load_config(str(tmp_path / "mine.yaml")).to_dict() == cfg.to_dict()
    (tmp_path / "short.yaml").write_text("extends: smoke\nlatro:\n  lora: {r: 16, lora_alpha: 32}\n")
    assert load_config(str(tmp_path / "short.yaml")).latro.lora == LoraConfig(r=16, lora_alpha=32)
    assert "--self_distill.lora.r 0" in field_help() and "--posterior.lora.save" in field_help()
    with pytest.raises(InputError, match="'final.lora.save' must be one of"):
        load_config("smoke", [("final.lora.save", "both")])
    with pytest.raises(InputError, match="did you mean 'lora_alpha'"):
        load_config("smoke", [("final.lora.lora_alfa", "8")])
    with pytest.raises(InputError, match="target_modules"):
        load_config("smoke", [("rft.lora.r", "4"), ("rft.lora.target_modules", "[]")])


def test_stage_hashes_change_only_when_lora_is_on_and_the_output_follows_save():
    """At its default `lora` is in no stage's settings, so the pinned hashes (test_layout) stay; set, it is."""
    from varreason.config import RunConfig
    from varreason.pipeline import STAGES

    cfg = RunConfig()
    assert not any("lora" in section for s in STAGES.values() for section in s.settings(cfg).values()
                   if isinstance(section, dict))
    default = {n: s.config_hash(cfg) for n, s in STAGES.items()}
    cfg.final.lora.r = 8
    assert STAGES["final"].settings(cfg)["final"]["lora"]["r"] == 8
    changed = {n for n, s in STAGES.items() if s.config_hash(cfg) != default[n]}
    assert changed == {"final", "matched", "rft", "star", "trice"}  # the stages that read the final section
    assert STAGES["final"].outputs(cfg) == ["models/final/config.json"]  # merged: an ordinary folder
    cfg.final.lora.save, cfg.grpo.lora.r, cfg.grpo.lora.save = "adapter", 4, "adapter"
    assert STAGES["final"].outputs(cfg) == ["models/final/adapter_config.json"]
    assert STAGES["matched"].outputs(cfg) == ["models/sft-matched/adapter_config.json"]
    assert STAGES["grpo"].outputs(cfg)[0] == "models/grpo/adapter_config.json"


# --- the compute account ----------------------------------------------------------------------------------------------

def test_a_lora_token_costs_4n_plus_the_adapter_and_attention_stays_3x():
    # N = 1000, 2 layers, d_attn 16; 10 tokens with contexts summing to 55; an adapter of 100 parameters
    full = compute.Account(trained=10, trained_context=55)
    lora = compute.Account(trained=10, trained_context=55, trained_frozen=10, trained_adapter=10 * 100)
    forward = 2 * 1000 * 10 + 2 * 2 * 16 * 55  # 20000 + 3520
    assert compute.account_flops(full, 1000, 2, 16)["trained"] == 3 * forward  # 70560
    # 4N per token (forward + activation gradients) + 3x the attention + 6 per adapter parameter
    assert compute.account_flops(lora, 1000, 2, 16)["trained"] == 4 * 1000 * 10 + 3 * 3520 + 6 * 100 * 10  # 56560
    compute.take()
    compute.record_sequences("trained", [0, 0], [4, 6], adapter_params=100)
    assert compute.take() == compute.Account(trained=10, trained_context=10 + 21, trained_frozen=10,
                                             trained_adapter=1000)
    with pytest.raises(ValueError, match="trained tokens"):
        compute.record("scored", 5, 15, adapter_params=100)


# --- a TRL stage on the smoke preset ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_grpo_trains_and_saves_an_adapter_on_the_smoke_preset(tmp_path):
    from varreason.cli import main

    out = tmp_path / "run"
    assert main(["run", "--config", "smoke", "--output-dir", str(out), "--until", "initial"]) == 0
    assert main(["grpo", "--config", "smoke", "--output-dir", str(out), "--grpo.lora.r", "4",
                 "--grpo.lora.save", "adapter"]) == 0
    adapter = out / "models" / "grpo"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "config.json").exists()
    assert base_of(adapter) == str(out / "models" / "initial")  # a fresh adapter on pi0
    assert (out / "grpo" / "grpo" / "rewards.parquet").exists()
    counts = json.loads((out / "manifest.json").read_text())["stages"]["grpo"]["counts"]
    assert counts["optimizer_steps"] == 2
    c, n_adapter = counts["compute"], sum(p.numel() for p in load_file(adapter / "adapter_model.safetensors").values())
    assert c["trained"] > 0 and c["trained_frozen"] == c["trained"] and c["trained_adapter"] == c["trained"] * n_adapter
    assert load_model(adapter).config.num_hidden_layers == load_model(out / "models" / "initial").config.num_hidden_layers

