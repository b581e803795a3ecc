"""Sampling and scoring backends: `hf` (CPU/GPU, any transformers causal LM) and, later, `vllm` (GPU, optional).

`from varreason.backends import HFGenerator, HFScorer` imports torch and transformers on first use only.
`backends.sampling.sample_verified` is the one generate -> cut -> verify path that every stage samples through.
"""

from varreason.backends.base import Generation, Generator, Scorer, StopReason

__all__ = ["Generation", "Generator", "HFGenerator", "HFScorer", "Scorer", "StopReason", "token_logprobs_chunked"]

_HF = {"HFGenerator", "HFScorer", "token_logprobs_chunked"}


def __getattr__(name: str):
    if name in _HF:
        from varreason.backends import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'varreason.backends' has no attribute {name!r}")
