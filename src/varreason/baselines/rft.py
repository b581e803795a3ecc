"""RFT: pi0's own traces (no hint), verified; the correct ones are kept and the model is fine-tuned on them.

The traces are the `sample` stage's with `sample.proposal: prior` (K per question at the sampling temperature), so
RFT and the no-hint ablation read the same samples. Paper §4: RFT is a forward-KL step towards pi0's posterior
weighted by pi0's accuracy P on each question (`keep`: a question with c of K correct traces gets c rows);
`normalized` divides by c so every solved question weighs 1, as the variational objective does.
"""

from __future__ import annotations

import copy

from varreason import objectives
from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.runs import RunDir
from varreason.stages import load_problems
from varreason.templates import Templates
from varreason.training import train_sft
from varreason.variational import _group, _init_path, _model_dir, final_training_config


def rft_rows(cfg: RunConfig, samples: list[dict], problems: dict, templates: Templates) -> tuple[list[dict], dict]:
    """Training rows (prompt, completion, weight, source, question_id, k) from verified samples, and counts."""
    r = cfg.rft
    rows, solved = [], 0
    for qid, group in _group(samples, "question_id").items():
        kept = [s for s in sorted(group, key=lambda s: s["k"])
                if s["correct"] and (s["finished"] or not r.require_finished) and s["trace"].strip()]
        weights = objectives.rft_weights(len(kept), r.mode)
        solved += bool(kept)
        p = problems[qid]
        for s, w in zip(kept, weights):
            # the verified answer as the model wrote it (it is correct), so the trace and its answer stay its own
            rows.append({"prompt": templates.prompt(p.question),
                         "completion": templates.completion(s["trace"], s["posterior_answer"]),
                         "weight": w, "source": "rft", "question_id": qid, "k": s["k"]})
    kept_rows = len(rows)
    if r.mix:
        for p in problems.values():
            rows.append({"prompt": templates.prompt(p.question), "completion": templates.completion(p.trace, p.answer),
                         "weight": 1.0, "source": "teacher", "question_id": p.id, "k": -1})
    questions = len({s["question_id"] for s in samples})
    return rows, {"questions": questions, "solved_questions": solved, "kept_traces": kept_rows,
                  "sampled_traces": len(samples), "rows": len(rows), "mode": r.mode, "mix": r.mix}


def stage_rft(cfg: RunConfig, run: RunDir) -> dict:
    """Build train/<rft.name>.parquet from pi0's verified traces and fine-tune models/<rft.name> on it."""
    if cfg.sample.proposal != "prior":
        raise InputError("rft trains on pi0's own traces: run it with '--sample.proposal prior' (the `sample` stage "
                         "then samples pi0 without the hint)")
    init = _init_path(cfg, run, cfg.rft.init)
    templates = Templates(cfg.format, load_tokenizer(_model_dir(run, "initial")))
    samples = run.read_rows("samples/posterior.parquet")
    if samples and "correct" not in samples[0]:
        raise InputError("samples have no 'correct' column (written by an older version); redo `sample` with --force",
                         file=str(run.path / "samples/posterior.parquet"))
    rows, counts = rft_rows(cfg, samples, {p.id: p for p in load_problems(run, "train")}, templates)
    if not counts["kept_traces"] and not cfg.rft.mix:
        raise InputError("no sampled trace of pi0 was correct: nothing to train RFT on (set rft.mix true, or sample "
                         "more: sample.num_generations, sample.temperature)")
    run.write_rows(f"train/{cfg.rft.name}.parquet", rows)
    sft = copy.deepcopy(cfg.rft)
    if sft.max_steps is None or sft.max_steps < 0:  # -1: the final model's optimiser steps (compute-matched)
        sft.max_steps = final_training_config(cfg, run).max_steps
    stats = train_sft(init, [{k: x[k] for k in ("prompt", "completion", "weight")} for x in rows], sft,
                      run.path / "models" / cfg.rft.name, seed=cfg.seed, log_dir=run.path / "logs" / cfg.rft.name)
    return {**counts, **stats, "init": cfg.rft.init}
