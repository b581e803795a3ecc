"""TRICE (Phan, Hoffman et al., NeurIPS 2023, arXiv 2312.02179) as a method of `compare`, after the authors' notebook
(google-research/cascades `examples/notebooks/trice.ipynb`; `../shared/reference/related-methods.md` §2):

    varreason compare --config demo --compare.methods "[trice]"

MCMC-EM over traces. Every training question keeps one trace, its chain's state ("memory"), started from a hinted
proposal: q's one trace per question from the `sample` stage (`trice.memory_init: q`, unfiltered as the notebook's
initial memory), or pi0 with the answer appended to the question (`pi0`). Then `trice.rounds` rounds:

1. the current model (pi0, then the last round's) proposes one trace per question without the hint, verified;
2. the chain moves to the proposal when it is verified correct, otherwise it keeps its state (an independence
   sampler whose likelihood is 0/1);
3. the model is trained, continuing from where it is, by weighted SFT on every chain's trace with weight
   mask (1 - beta c) and every rejected proposal with the signed weight -mask beta (1 - c) (`objectives.trice_weights`;
   c: the proposal is correct, m: the state before the move was, mask = c or m, beta the leave-one-out acceptance
   rate of the other chains).

Open choices (docs/baselines.md says why): beta over the round's questions (all chains the round moves, not an
optimiser batch); every row trained with its signed weight (no subsampling: the notebook's unbiased variant, so its
exp(w) resampling bug does not arise); the optimiser steps (-1: the final model's) split over the rounds.

Artifacts: trice/<name>/round-<r>/proposals.parquet (the round's proposals), trice/<name>/round-<r>/chain.parquet
(each chain after the move: question_id, trace, correct, moved, beta and the two weights), trice/<name>/memory.parquet
(the initial states) and train/<name>.parquet (every round's rows, with a `round` column). A killed stage resumes:
each round's proposal shards and model are kept under the stage's work key until the stage is recorded.

Why not TRL: its SFTTrainer (trl/trainer/sft_trainer.py) has `loss_type` nll | dft and no per-example weights, let
alone signed ones; its RLOOTrainer (trl/trainer/rloo_trainer.py) is on-policy, with a leave-one-out baseline over the
k completions of one prompt, while TRICE trains on chain states the current policy did not just sample and takes its
baseline across questions. So: our sampling path (backends.sampling) and `training.train_sft(signed=True)`.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np

from varreason import compute, objectives
from varreason.backends import open_engine
from varreason.backends.sampling import sampling_work
from varreason.config import RunConfig, TriceConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.runs import RunDir
from varreason.stages.common import (
    final_training_config,
    group_rows,
    hint,
    model_dir,
    policy_dir,
    sampled_questions,
    teacher_row,
)
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft


def is_correct_state(row: dict, require_finished: bool) -> bool:
    """p(y | x, z) of the 0/1 likelihood: the answer after the trace verified, a non-empty trace, and finished unless
    allowed otherwise (the same rule as rft's and star's kept traces)."""
    return bool(row["correct"]) and bool(str(row["trace"]).strip()) and (bool(row["finished"]) or not require_finished)


def round_steps(total: int, rounds: int) -> list[int]:
    """The optimiser steps of each round: `total` split as evenly as it goes, the first rounds taking the remainder."""
    if total < rounds:
        raise InputError(f"TRICE has {total} optimiser steps for {rounds} rounds: every round needs at least one "
                         "(raise trice.max_steps or lower trice.rounds)", field="trice.max_steps")
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def trace_row(p: Problem, k: int, v) -> dict:
    """One sampled trace: the text, the cut trace, the answer written after it and its verdict."""
    return {"question_id": p.id, "k": k, "text": v.generation.text, "trace": v.cut.trace,
            "posterior_answer": v.cut.answer, "correct": v.correct, "finished": v.generation.finished}


def sample_round(cfg: RunConfig, run: RunDir, model: str, problems: list[Problem], prompt_of, *, rel_dir: str,
                 artifact: str, settings, tag: str, desc: str) -> list[dict]:
    """One trace per problem from `model`, verified, in resumable shards under `rel_dir` merged into `artifact` (the
    shards are kept until the stage is recorded, so a kill in a later round does not sample this one again). The
    engine, batch and shard sizes are the `sample` section's, as STaR's rationalizer's."""
    with open_engine(cfg.backend_of("sample"), model, batch_size=cfg.sample.batch_size, vllm=cfg.vllm,
                     seed=cfg.seed) as engine:
        templates = Templates(cfg.format, engine.tokenizer)
        work = sampling_work(engine, templates, lambda p: prompt_of(templates, p), trace_row, n=1, settings=settings,
                             tag=tag, seed=cfg.seed)
        return run.sharded(rel_dir, problems, cfg.sample.chunk_size, work, artifact=artifact, desc=desc,
                           keep_shards=True)


def initial_memory(cfg: RunConfig, run: RunDir, problems: list[Problem]) -> dict[str, dict]:
    """The chains' first states, one per question: q's first sampled trace (`memory_init: q`, the sample stage's), or
    pi0's trace with the answer appended to the question (`pi0`, sampled here with the `sample` settings)."""
    t = cfg.trice
    if t.memory_init == "q":
        if cfg.sample.proposal != "posterior":
            raise InputError("trice.memory_init q starts each chain from q's trace: run it with '--sample.proposal "
                             "posterior' (compare's trice method sets it), or set trice.memory_init pi0")
        by_question = group_rows(run.read_rows("samples/posterior.parquet"), "question_id")
        rows = {p.id: min(by_question[p.id], key=lambda r: r["k"]) for p in problems if p.id in by_question}
        missing = [p.id for p in problems if p.id not in rows]
        if missing:
            raise InputError(f"q has no sampled trace for question {missing[0]!r} ({len(missing)} missing); redo "
                             "`sample`", file=str(run.path / "samples/posterior.parquet"))
        run.write_rows(f"trice/{t.name}/memory.parquet", [rows[p.id] for p in problems])  # the states it starts from
    else:
        def hinted(templates: Templates, p: Problem) -> str:  # the notebook's guide prompt: the answer given
            return templates.prompt(f"{p.question} ({hint(cfg, p)})")

        sampled = sample_round(cfg, run, model_dir(run, "initial"), problems, hinted, rel_dir=f"trice/{t.name}/memory",
                               artifact=f"trice/{t.name}/memory.parquet", settings=cfg.sample, tag="trice-memory",
                               desc="TRICE: initial memory (pi0, hinted)")
        rows = {r["question_id"]: r for r in sampled}
    return {qid: {**r, "state_correct": is_correct_state(r, t.require_finished)} for qid, r in rows.items()}


def move_chains(memory: dict[str, dict], proposals: dict[str, dict], require_finished: bool) -> list[dict]:
    """One MCMC step of every chain: it moves to its proposal when the proposal is a correct state, otherwise it
    keeps its trace; with the leave-one-out weights of the step (`objectives.trice_weights`), in question order."""
    ids = list(memory)
    c = [is_correct_state(proposals[q], require_finished) for q in ids]
    m = [memory[q]["state_correct"] for q in ids]
    beta = objectives.trice_control_variate(c, m)
    memory_w, proposal_w = objectives.trice_weights(c, m)
    out = []
    for i, q in enumerate(ids):
        state = proposals[q] if c[i] else memory[q]
        out.append({"question_id": q, "trace": state["trace"], "answer": state["posterior_answer"],
                    "correct": bool(c[i] or m[i]), "moved": bool(c[i]), "memory_was_correct": bool(m[i]),
                    "proposal_trace": proposals[q]["trace"], "proposal_text": proposals[q]["text"],
                    "proposal_correct": bool(c[i]), "beta": float(beta[i]), "memory_weight": float(memory_w[i]),
                    "proposal_weight": float(proposal_w[i]), "finished": state["finished"]})
    return out


def training_rows(chain: list[dict], problems: dict[str, Problem], templates: Templates, round: int) -> list[dict]:
    """The round's rows under pi0's plain prompt: each chain's trace (the memory after the move, with the verified
    answer written after it) and each rejected proposal exactly as it was sampled (its score function is the control
    variate), with their signed weights. A row of weight 0 carries no gradient and is left out, as is an empty
    proposal (nothing was generated: no log-likelihood to push down)."""
    rows = []
    for s in chain:
        prompt = templates.prompt(problems[s["question_id"]].question)
        if s["memory_weight"] != 0.0:
            rows.append({"prompt": prompt, "completion": templates.completion(s["trace"], s["answer"]),
                         "weight": s["memory_weight"], "source": "trice-memory", "question_id": s["question_id"],
                         "round": round})
        if s["proposal_weight"] != 0.0 and s["proposal_text"]:
            rows.append({"prompt": prompt, "completion": s["proposal_text"],
                         "weight": s["proposal_weight"], "source": "trice-proposal", "question_id": s["question_id"],
                         "round": round})
    return rows


def round_counts(chain: list[dict], rows: list[dict]) -> dict:
    """What a round did: acceptance rate (chains that moved), the share in a correct state after the move, the mean
    beta over the chains with a gradient, and its rows and their summed weights by sign."""
    masked = [s["beta"] for s in chain if s["correct"]]
    weights = np.array([r["weight"] for r in rows], dtype=np.float64)
    return {"acceptance_rate": sum(s["moved"] for s in chain) / len(chain),
            "correct_state_share": sum(s["correct"] for s in chain) / len(chain),
            "mean_beta": float(np.mean(masked)) if masked else None, "rows": len(rows),
            "positive_weight": float(weights[weights > 0].sum()), "negative_weight": float(weights[weights < 0].sum())}


def train_round(cfg: RunConfig, run: RunDir, start: str, rows: list[dict], steps: int, out_dir: Path, label: str,
                resumable: bool) -> dict:
    """Signed weighted SFT of `start` on the round's rows for `steps` optimiser steps. `resumable` (a round's model
    under the stage's work key): its stats and the compute it took are kept beside it, so a resumed stage neither
    retrains it nor loses its count."""
    sft: TriceConfig = copy.deepcopy(cfg.trice)
    sft.max_steps = steps
    record = f"{out_dir.relative_to(run.path)}.json"
    done = run.read_json(record) if resumable else None
    if done is not None and (out_dir / "config.json").exists():
        compute.add(compute.Account.from_dict(done.get("compute")))
        return done["stats"]
    with compute.set_apart() as spent:
        stats = train_sft(start, [{k: r[k] for k in ("prompt", "completion", "weight")} for r in rows], sft, out_dir,
                          seed=cfg.seed, log_dir=run.path / "logs" / label, signed=True)
    compute.add(spent[0])
    if resumable:
        run.write_json(record, {"stats": stats, "compute": spent[0].to_dict()})
    return stats


def drop_other_work(run: RunDir, name: str) -> None:
    """Round work kept under another work key (a killed stage of other settings): it can never be resumed here."""
    if not run.ranks.main:
        return
    for folder in (run.path / "trice" / name).glob("*/.shards-*"):
        if folder.name != f".shards-{run.shard_key}":
            shutil.rmtree(folder, ignore_errors=True)


def stage_trice(cfg: RunConfig, run: RunDir) -> dict:
    """TRICE's rounds from the chains' hinted first states; the last round's model is models/<trice.name>
    (train/<trice.name>.parquet: every round's rows; trice/<trice.name>/round-<r>/chain.parquet: the chains)."""
    t = cfg.trice
    drop_other_work(run, t.name)
    problems = sampled_questions(cfg, run)  # the questions the `sample` stage sampled (sample.num_questions)
    by_id = {p.id: p for p in problems}
    templates = Templates(cfg.format, load_tokenizer(model_dir(run, "initial")))
    memory = initial_memory(cfg, run, problems)
    initial_correct = sum(m["state_correct"] for m in memory.values()) / len(memory)
    steps = round_steps(t.max_steps if t.max_steps > 0 else final_training_config(cfg, run).max_steps, t.rounds)
    model, all_rows, rounds = policy_dir(run), [], []
    for r in range(1, t.rounds + 1):
        rel, last = f"trice/{t.name}/round-{r}", r == t.rounds
        proposals = sample_round(cfg, run, model, problems, lambda tp, p: tp.prompt(p.question), rel_dir=rel,
                                 artifact=f"{rel}/proposals.parquet", settings=t, tag=f"trice-round{r}", desc=f"TRICE round {r}: propose")
        chain = move_chains(memory, {row["question_id"]: row for row in proposals}, t.require_finished)
        run.write_rows(f"{rel}/chain.parquet", chain)
        rows = training_rows(chain, by_id, templates, r)
        counts = round_counts(chain, rows)
        if t.mix:
            rows += [teacher_row(templates, p, question_id=p.id, round=r) for p in problems]
        if not rows:
            raise InputError(f"TRICE round {r}: no chain is in a correct state and no proposal was right, nothing to "
                             "train on (set trice.mix true, try the other trice.memory_init, or train pi0 longer)")
        # a round's model lives under the work key (dropped when the stage is recorded); the last one is the method's
        out = run.path / "models" / t.name if last else run.path / rel / f".shards-{run.shard_key}" / f"{t.name}-round{r}"
        stats = train_round(cfg, run, model, rows, steps[r - 1], out, out.name, resumable=not last)
        rounds.append({"round": r, **counts, "optimizer_steps": stats["optimizer_steps"],
                       "train_loss": stats["train_loss"]})
        all_rows += rows
        memory = {s["question_id"]: {"trace": s["trace"], "posterior_answer": s["answer"], "finished": s["finished"],
                                     "state_correct": s["correct"]} for s in chain}
        model = str(out)
    run.write_rows(f"train/{t.name}.parquet", all_rows)
    return {"questions": len(problems), "memory_init": t.memory_init, "initial_correct_share": initial_correct,
            "rounds": rounds, "optimizer_steps": sum(x["optimizer_steps"] for x in rounds), "rows": len(all_rows),
            "acceptance_rate_by_round": [x["acceptance_rate"] for x in rounds],
            "correct_state_share_by_round": [x["correct_state_share"] for x in rounds],
            "mean_beta_by_round": [x["mean_beta"] for x in rounds]}
