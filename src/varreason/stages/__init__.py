"""The stages: each one function `stage_<name>(cfg, run) -> counts` that reads artifacts of the run directory and
writes one artifact. Which stage runs when, and on which config sections it depends, is `pipeline.py`'s table.

    pi0.py          data, base, initial (pi0 = SFT on the teacher traces)
    variational.py  posterior, sample, score, rollout, weights, build, final, matched (sft-matched)
    baselines.py    rft, grpo (the no-hint ablation is `variational` with `sample.proposal: prior`)
    eval.py         eval: held-out accuracy of every reasoning model of the run
    common.py       what several stages share (problems, model folders, seeds, the sampled subset)
"""
