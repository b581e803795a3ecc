"""Hugging Face backend: batched sampling with our decode loop over a transformers model, and memory-safe
per-token scoring.

Works on CPU and GPU with any `transformers` causal LM. See `base.py` for the conventions of `Generation`.

Sampling (`HFGenerator`)
    Prompts are tokenized without special tokens, sorted by length (longest first, so an out-of-memory error comes
    early and padding is small), left-padded into batches of `batch_size // n` prompts (at least one; greedy decodes
    once per prompt, so `batch_size` prompts), prefilled once and decoded with the KV cache, `n` copies of each (`_generate_batch` says why this is not `model.generate`). The sampling
    distribution is exactly the one the arguments describe: the model's own `generation_config` (e.g. a
    checkpoint's `top_k=20` or repetition penalty) is never read, and there is no top-k. Each batch is seeded from
    `(seed, batch index)` inside a forked RNG, so a call is reproducible and leaves the global RNG untouched.
    Outputs depend on the batching (batch_size and the set of prompts), as in any batched sampler.

Scoring (`HFScorer`)
    The transformer body runs on right-padded batches and returns hidden states; logits are computed only at the
    completion positions, `chunk_size` positions at a time (`token_logprobs_chunked`), so a long completion never
    materialises a float32 [tokens x vocab] tensor (16k tokens x 150k vocab would be 9.6 GB, twice with
    log_softmax). Final-logit scaling / soft-capping in the config is applied; on first use the scorer checks its
    logits against `model(...).logits` and refuses a model whose head it does not reproduce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import DynamicCache, LogitsProcessorList, StopStringCriteria
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from varreason.backends.base import Generation, apply_stop_strings, exact_decoder, prompt_token_ids

# ----------------------------------------------------------------------------------------------------------------------
# helpers shared by both classes


def _draw(probs: Tensor) -> Tensor:
    """One token per row from `probs` [rows, vocab] by inverse CDF: the distribution of `torch.multinomial`, whose
    vocab-sized exponential draw per row cost 14% of a sampling batch on CPU; this draws one uniform per row."""
    cdf = probs.double().cumsum(dim=-1)  # float64: in float32 a tiny p late in a 150k vocabulary would round away
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("sampling: the model's probabilities contain inf / nan or are all zero")
    u = torch.rand((probs.shape[0], 1), device=probs.device, dtype=cdf.dtype) * total  # < the row's total
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # the first token whose cdf exceeds u (p > 0)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the call and restore its previous mode (it may be trained afterwards)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------------------------------------------------
# sampling


class HFGenerator:
    """Batched sampling from a Hugging Face causal LM (implements `base.Generator`)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        if tokenizer.eos_token_id is None:
            raise ValueError("HFGenerator: the tokenizer has no eos token; set tokenizer.eos_token first")
        if batch_size < 1:
            raise ValueError(f"HFGenerator: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_id: int = tokenizer.eos_token_id
        self.pad_token_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self._decode = exact_decoder(tokenizer)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int = 0,
        progress: bool = True,
        desc: str = "sampling",
    ) -> list[list[Generation]]:
        prompt_ids, stop = prompt_token_ids("HFGenerator.generate", self.tokenizer, prompts, n, max_new_tokens,
                                            temperature, top_p, stop)
        if not prompts:
            return []

        # Greedy decoding gives the same output n times: decode each prompt once and copy. Sampled copies of a
        # prompt share one prefill (see `_generate_batch`): a batch holds batch_size // copies prompts.
        copies = 1 if temperature == 0 else n
        order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))  # stable
        batches = _batches(order, max(1, self.batch_size // copies))

        results: list[list[Generation]] = [[] for _ in prompts]
        stop_check = StopStringCriteria(self.tokenizer, stop) if stop else None
        with _eval_mode(self.model):
            for b, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress)):
                generations = self._generate_batch(
                    [prompt_ids[i] for i in batch], copies,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    stop=stop,
                    stop_check=stop_check,
                    seed=(seed * 1_000_003 + b) % 2**63,
                )
                for row, i in enumerate(batch):
                    results[i] = generations[row * copies: (row + 1) * copies]
        if copies == 1 and n > 1:
            for row in results:
                row[1:] = [Generation(row[0].text, list(row[0].token_ids), row[0].finished, row[0].stop_reason)
                           for _ in range(n - 1)]
        return results

    def _generate_batch(
        self, prompt_ids: list[list[int]], copies: int, *, max_new_tokens: int, temperature: float, top_p: float,
        stop: list[str] | None, stop_check: StopStringCriteria | None, seed: int,
    ) -> list[Generation]:
        """`copies` completions of each prompt (a prompt's copies adjacent in the output), decoded with the KV cache.

        Why not `model.generate`: it decodes every row until the longest one ends and prefills each of the n copies of
        a prompt on its own. Here a finished row leaves the batch (its cache rows are dropped), and the copies share
        one prefill (the cache is repeated after it). On the demo's pi0 that took 512 prompts x 8 traces from 34.5 to
        11.8 s and 2048 rollout prompts x 4 answers from 11.0 to 4.6 s (docs/performance.md). The sampling
        distribution is generate's: transformers' temperature and top-p warpers, then one draw from the result
        (`_draw`); greedy is the argmax, as in generate; stop strings are transformers' `StopStringCriteria`, checked on
        the generated tokens only. transformers' continuous batching (`generate_batch`) measured 838 tokens/s on CPU
        against 6.5k for generate, so it is no substitute.
        """
        device = _device(self.model)
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):  # left padding: the last prompt token is at the same place in every row
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as generate does
        warpers = LogitsProcessorList()
        if temperature > 0:
            warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
        rows = len(prompt_ids) * copies
        cache = DynamicCache(config=self.model.config)
        # Rows can leave a cache of plain attention layers only; a linear-attention (hybrid) model's recurrent states
        # cannot be cut or repeated that way, so there the copies are prefilled apiece and finished rows ride along.
        prunable = all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers)
        if copies > 1 and not prunable:
            input_ids, attention_mask, position_ids = (t.repeat_interleave(copies, dim=0)
                                                       for t in (input_ids, attention_mask, position_ids))
        outputs: list[tuple[list[int], bool] | None] = [None] * rows  # (generated ids, stopped by a stop string)
        active = torch.arange(rows, device=device)  # the output row of each row still in the batch
        live = torch.ones(rows, dtype=torch.bool, device=device)  # rows in the batch that have not finished
        generated = torch.empty((rows, 0), dtype=torch.long, device=device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            position = position_ids[:, -1:]
            if copies > 1 and prunable:
                cache.batch_repeat_interleave(copies)
                logits, attention_mask, position = (t.repeat_interleave(copies, dim=0)
                                                    for t in (logits, attention_mask, position))
            for step in range(max_new_tokens):
                logits = logits.float()
                if temperature > 0:
                    token = _draw(torch.softmax(warpers(generated, logits), dim=-1))
                else:
                    token = logits.argmax(dim=-1)
                generated = torch.cat([generated, token[:, None]], dim=1)
                stopped = stop_check(generated, logits) if stop_check is not None else torch.zeros_like(live)
                done = live & ((token == self.eos_token_id) | stopped | (step == max_new_tokens - 1))
                if done.any():
                    for row in done.nonzero().flatten().tolist():
                        outputs[int(active[row])] = (generated[row].tolist(), bool(stopped[row]))
                    live = live & ~done
                    if not live.any():
                        break
                    if prunable:
                        keep = live.nonzero().flatten()
                        active, live, generated, token, attention_mask, position = (
                            t[keep] for t in (active, live, generated, token, attention_mask, position))
                        cache.batch_select_indices(keep)
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((token.shape[0], 1))], dim=1)
                position = position + 1
                logits = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position,
                                    past_key_values=cache, use_cache=True).logits[:, -1]
        return [self._finish(ids, stop, stopped) for ids, stopped in outputs]

    def _finish(self, ids: list[int], stop: list[str] | None, stopped: bool) -> Generation:
        """Turn one row of generated ids into a `Generation`: eos excluded, the stop-string cut applied."""
        if self.eos_token_id in ids:
            tokens, reason = ids[: ids.index(self.eos_token_id)], "eos"
        else:
            tokens, reason = ids, "length"
        generation = apply_stop_strings(self._decode, tokens, reason, stop)
        if stopped and generation.stop_reason == "length":
            # StopStringCriteria matched on tokens whose decoded text does not show the string as such (a tokenizer's
            # decode can differ from its tokens' pieces): the row did stop, keep its tokens as they are.
            generation = Generation(generation.text, generation.token_ids, True, "stop")
        return generation


# ----------------------------------------------------------------------------------------------------------------------
# scoring


def token_logprobs_chunked(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    chunk_size: int,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> Tensor:
    """log softmax(lm_head(hidden))[t, targets[t]] for every position t, `chunk_size` positions at a time.

    hidden: [T, H] (model dtype), targets: [T] token ids; returns [T] float32. Without autograd (the scorer runs
    under `torch.inference_mode`) the extra memory is one [chunk_size, vocab] float32 buffer, worked on in place,
    instead of two [T, vocab] tensors; with autograd it is a few chunk-sized tensors per chunk (kept for backward). `logit_scale` multiplies the logits and `softcap`
    applies `softcap * tanh(logits / softcap)`, for heads that do so after `lm_head` (Cohere, Granite, Gemma 2/3).
    """
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"token_logprobs_chunked: need hidden [T, H] and targets [T], got {tuple(hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"token_logprobs_chunked: chunk_size must be >= 1, got {chunk_size}")
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = lm_head(hidden[start : start + chunk_size]).float()
        target = targets[start : start + chunk_size].to(logits.device).unsqueeze(-1)
        if logits.requires_grad:  # differentiable path (out of place)
            if logit_scale != 1.0:
                logits = logits * logit_scale
            if softcap is not None:
                logits = torch.tanh(logits / softcap) * softcap
            picked = logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        else:  # in place: a single [chunk, vocab] float32 buffer at any time
            if logit_scale != 1.0:
                logits.mul_(logit_scale)
            if softcap is not None:
                logits.div_(softcap).tanh_().mul_(softcap)
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(-1, target) - top
            picked = (picked - logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log()).squeeze(-1)
        out[start : start + chunk_size] = picked.to(out.device)
        del logits
    return out


def _head_transform(model) -> tuple[float, float | None]:
    """(logit_scale, softcap) applied after lm_head by the architectures that do so."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = 1.0
    if getattr(model, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale = float(model.logit_scale)
    elif getattr(config, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale = 1.0 / float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3, nanochat
    return scale, (float(softcap) if softcap else None)


class HFScorer:
    """Per-token log-probabilities of completions under a Hugging Face causal LM (implements `base.Scorer`)."""

    def __init__(self, model, tokenizer=None, batch_size: int = 16, chunk_size: int = 1024):
        if batch_size < 1 or chunk_size < 1:
            raise ValueError(f"HFScorer: batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
        self.model = model
        self.tokenizer = tokenizer  # unused: scoring works on token ids; kept for a uniform constructor
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.body = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None or self.body is model:
            raise ValueError(f"HFScorer: cannot find the transformer body and lm_head of {type(model).__name__}")
        self.logit_scale, self.softcap = _head_transform(model)
        self._checked = False

    def _hidden(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _check_head(self) -> None:
        """Once: our body + lm_head (+ scaling) must reproduce the model's own log-probs on a short input."""
        device = _device(self.model)
        vocab = self.lm_head.weight.shape[0]
        ids = (torch.arange(16, device=device) * 7919 % vocab).unsqueeze(0)
        expected = torch.log_softmax(self.model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
        expected = expected.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
        got = token_logprobs_chunked(self._hidden(ids, None)[0, :-1], self.lm_head, ids[0, 1:], self.chunk_size,
                                     logit_scale=self.logit_scale, softcap=self.softcap)
        tol = 1e-3 if self.lm_head.weight.dtype == torch.float32 else 5e-2
        if not torch.allclose(got, expected.to(got.device), atol=tol, rtol=tol):
            raise RuntimeError(
                f"HFScorer: {type(self.model).__name__} computes logits differently from lm_head(last hidden state) "
                f"(max diff {(got - expected.to(got.device)).abs().max().item():.3g}); chunked scoring does not "
                "support this architecture")
        self._checked = True

    @torch.inference_mode()
    def score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], progress: bool = True
    ) -> list[list[float]]:
        if len(prompt_ids) != len(completion_ids):
            raise ValueError(f"HFScorer.score: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            if not p and c:
                raise ValueError(f"HFScorer.score: prompt {i} is empty; the first completion token needs a context")
        results: list[list[float]] = [[] for _ in prompt_ids]
        todo = [i for i, c in enumerate(completion_ids) if c]
        if not todo:
            return results
        order = sorted(todo, key=lambda i: -(len(prompt_ids[i]) + len(completion_ids[i])))
        device = _device(self.model)
        with _eval_mode(self.model):
            if not self._checked:
                self._check_head()
            for batch in tqdm(_batches(order, self.batch_size), desc="scoring", unit="batch", disable=not progress):
                seqs = [list(prompt_ids[i]) + list(completion_ids[i]) for i in batch]
                width = max(len(s) for s in seqs)
                input_ids = torch.zeros((len(seqs), width), dtype=torch.long)
                attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, s in enumerate(seqs):  # right padding: real tokens keep positions 0..len-1
                    input_ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
                    attention_mask[row, : len(s)] = 1
                mask = None if bool(attention_mask.all()) else attention_mask.to(device)
                hidden = self._hidden(input_ids.to(device), mask)

                # Hidden state at position t predicts token t + 1: completion tokens are predicted from
                # positions len(prompt) - 1 ... len(seq) - 2.
                rows, cols, lengths = [], [], []
                for row, i in enumerate(batch):
                    start, length = len(prompt_ids[i]) - 1, len(completion_ids[i])
                    rows += [row] * length
                    cols += range(start, start + length)
                    lengths.append(length)
                rows_t, cols_t = torch.tensor(rows, device=hidden.device), torch.tensor(cols, device=hidden.device)
                targets = input_ids.to(hidden.device)[rows_t, cols_t + 1]
                logprobs = token_logprobs_chunked(hidden[rows_t, cols_t], self.lm_head, targets, self.chunk_size,
                                                  logit_scale=self.logit_scale, softcap=self.softcap)
                del hidden
                for i, values in zip(batch, torch.split(logprobs.cpu(), lengths)):
                    results[i] = values.tolist()
        return results


# ----------------------------------------------------------------------------------------------------------------------
# both, over one loaded model


class HFEngine:
    """One loaded model as both `Generator` and `Scorer` (what `backends.open_engine` returns for `hf`)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, chunk_size: int = 1024):
        self.model, self.tokenizer, self.chunk_size, self.batch_size = model, tokenizer, chunk_size, batch_size
        self.generator = HFGenerator(model, tokenizer, batch_size=batch_size)
        self._scorer: HFScorer | None = None

    def generate(self, prompts: list[str], **kwargs) -> list[list[Generation]]:
        return self.generator.generate(prompts, **kwargs)

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
              progress: bool = True) -> list[list[float]]:
        if self._scorer is None:
            self._scorer = HFScorer(self.model, self.tokenizer, batch_size=self.generator.batch_size,
                                    chunk_size=self.chunk_size)
        return self._scorer.score(prompt_ids, completion_ids, progress=progress)

    def with_batch_size(self, batch_size: int) -> HFEngine:
        """The same model with another batch size (no copy of the weights)."""
        return HFEngine(self.model, self.tokenizer, batch_size=batch_size, chunk_size=self.chunk_size)

    def close(self) -> None:
        pass
