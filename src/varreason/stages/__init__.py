"""The stages: each one function `stage_<name>(cfg, run) -> counts` that reads artifacts of the run directory and
writes one artifact. Which stage reads what, and on which config sections it depends, is `graph.py`'s table; the methods built
from them are `methods.py`'s declarations.

    pi0.py          data, base, initial (pi0 = SFT on the teacher traces)
    variational.py  posterior, sample, score, rollout, weights, build, final, matched (sft-matched)
    baselines.py    rft, grpo (the no-hint ablation is `variational` with `sample.proposal: prior`)
    star.py         star (STaR: verified pi0 traces and rationalizations, trained without the hint)
    trice.py        trice (TRICE: persistent per-question traces, pi proposes, signed SFT with a control variate)
    latro.py        latro (LaTRO: TRL RLOO, reward log pi(y* | x, z) under the policy, KL to pi0)
    self_distill.py self-distill (on-policy distillation of the hinted posterior q into pi, TRL sdft)
    eval.py         eval: held-out accuracy of every reasoning model of the run
    common.py       what several stages share (problems, model folders, seeds, the sampled subset)
"""
