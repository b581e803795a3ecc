"""TRICE (Phan, Hoffman et al., NeurIPS 2023, arXiv 2312.02179) as a method of `compare`, after the authors' notebook
(google-research/cascades `examples/notebooks/trice.ipynb`; `../shared/reference/related-methods.md` §2):

    varreason compare --config demo --compare.methods "[trice]"

MCMC-EM over traces. Every training question keeps one trace, its chain's state ("memory"), started from a hinted
proposal: q's one trace per question from the `sample` stage (`trice.memory_init: q`, unfiltered as the notebook's
initial memory), or pi0 with the answer appended to the question (`pi0`). Then, from pi0:

1. the current model proposes one trace per question without the hint, verified;
2. the chain moves to the proposal when it is verified correct, otherwise it keeps its state (an independence
   sampler whose likelihood is 0/1);
3. the model is trained, continuing from where it is, by weighted SFT on every chain's trace with weight
   mask (1 - beta c) and every rejected proposal with the signed weight -mask beta (1 - c) (`objectives.trice_weights`;
   c: the proposal is correct, m: the state before the move was, mask = c or m, beta the leave-one-out acceptance
   rate of the other chains).

`trice.schedule: online` (default; the notebook's `fit`): every optimiser step takes the next
per_device_train_batch_size questions (x gradient_accumulation_steps x processes: one step's questions, in
GlobalBatchSampler's seeded epoch order), the model as the last step left it proposes for them (`propose`: our sampling
path on the live model), their chains move, beta is taken over the step's questions, and one optimiser step is taken
on their <= 2B signed rows (`OnlineTrainer`, a WeightedSFTTrainer: the same loss and normaliser as `train_sft`; the
constant normaliser is the chains' first states' mean length x 2B, see `online_normalizer`). The control variate
beta grad log p(z') is mean-zero only for z' drawn from the model being trained; so proposals are never reused.
`rounds` (the previous schedule): each of `trice.rounds` rounds proposes for every question with the last round's
model, then trains max_steps / rounds steps on the round's rows; its rows outlive the model that drew them by dozens of
steps, and on the demo it collapsed (docs/baselines.md).

Open choices (docs/baselines.md says why): every row trained with its signed weight (no subsampling: the notebook's
unbiased variant, so its exp(w) resampling bug does not arise); max_steps -1 = the final model's steps; a micro-batch
with no gradient (no chain in a correct state) still takes its step, on one row at weight 0.

Artifacts. Both: trice/<name>/memory.parquet (the initial states), train/<name>.parquet (every row trained: prompt,
completion, signed weight, source, question_id, and `step` (online) or `round`). Online: trice/<name>/steps.parquet
(one record per chain a step moved: step, verdicts, beta, the two weights, the proposal) and trice/<name>/chains.parquet
(the chains at the end). Its train rows are generated on the fly; they are kept whole (texts included) because the bias
report reads them and the demo's are a few MB; every checkpoint holds them with the chains. Rounds:
trice/<name>/round-<r>/proposals.parquet and chain.parquet.

Resuming. Online: every save_steps the checkpoint (model, optimiser, scheduler, RNG: the Trainer's) also gets the chains,
the records so far and the compute spent so far (`Chains.save`, written before the Trainer's trainer_state.json, which
marks a checkpoint complete); the checkpoints live under the stage's work key (trice/<name>/online/.shards-<key>/), so
a run of other settings never resumes them. A killed stage resumes from the last complete checkpoint: the steps after
it are redone with the same questions (the epoch order is a function of the seed and the step) and the same proposals
(seeded by the step), so it ends with the steps, chains, rows, weights and compute of a run never killed (on the same
machine and batch shapes; tests/test_trice.py checks this). Rounds: each round's proposal shards and model are kept
under the stage's work key until the stage is recorded.

Why not TRL: its SFTTrainer (trl/trainer/sft_trainer.py) has `loss_type` nll | dft and no per-example weights, let
alone signed ones; its RLOOTrainer (trl/trainer/rloo_trainer.py) is on-policy, with a leave-one-out baseline over the
k completions of one prompt, while TRICE trains on chain states the current policy did not just sample and takes its
baseline across questions. So: our sampling path (backends.sampling) and our weighted SFT (`training`), signed.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from varreason import compute, objectives
from varreason.backends import LazyEngine, open_engine
from varreason.backends.sampling import sample_verified, sampling_work
from varreason.config import RunConfig, TriceConfig
from varreason.errors import InputError
from varreason.models import is_model_folder, leave_zero3, load_tokenizer
from varreason.models.attention import SDPA_GQA, VARLEN_SDPA
from varreason.models.lora import adapter_parameters, sft_model
from varreason.runs import RunDir, stable_seed
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
from varreason.training import (
    PackedCollator,
    WeightedCollator,
    WeightedSFTTrainer,
    last_complete_checkpoint,
    no_half_checkpoint_on_a_full_disk,
    save_trained,
    tokenize_examples,
    train_sft,
    trainer_output,
    weighted_sft_arguments,
)


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


def training_rows(chain: list[dict], problems: dict[str, Problem], templates: Templates, **tag) -> list[dict]:
    """The rows of a round (`tag`: round=r) or an online step (step=s) under pi0's plain prompt: each chain's trace (the memory after the move, with the verified
    answer written after it) and each rejected proposal exactly as it was sampled (its score function is the control
    variate), with their signed weights. A row of weight 0 carries no gradient and is left out, as is an empty
    proposal (nothing was generated: no log-likelihood to push down)."""
    rows = []
    for s in chain:
        prompt = templates.prompt(problems[s["question_id"]].question)
        if s["memory_weight"] != 0.0:
            rows.append({"prompt": prompt, "completion": templates.completion(s["trace"], s["answer"]),
                         "weight": s["memory_weight"], "source": "trice-memory", "question_id": s["question_id"],
                         **tag})
        if s["proposal_weight"] != 0.0 and s["proposal_text"]:
            rows.append({"prompt": prompt, "completion": s["proposal_text"],
                         "weight": s["proposal_weight"], "source": "trice-proposal", "question_id": s["question_id"],
                         **tag})
    return rows


def round_counts(chain: list[dict], rows: list[dict]) -> dict:
    """What a round did: acceptance rate (chains that moved), the share in a correct state after the move, the mean
    beta over the chains with a gradient, and its rows and their summed weights by sign."""
    weights = np.array([r["weight"] for r in rows], dtype=np.float64)
    return {**acceptance_and_beta(chain), "correct_state_share": sum(s["correct"] for s in chain) / len(chain),
            "rows": len(rows),
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
    if done is not None and is_model_folder(out_dir):
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
    """TRICE from the chains' hinted first states on `trice.schedule` (online: the notebook's; rounds: the previous
    one); its model is models/<trice.name>, every row it trained on is in train/<trice.name>.parquet."""
    t = cfg.trice
    drop_other_work(run, t.name)
    problems = sampled_questions(cfg, run)  # the questions the `sample` stage sampled (sample.num_questions)
    templates = Templates(cfg.format, load_tokenizer(model_dir(run, "initial")))
    memory = initial_memory(cfg, run, problems)
    first = {"questions": len(problems), "memory_init": t.memory_init, "schedule": t.schedule,
             "initial_correct_share": sum(m["state_correct"] for m in memory.values()) / len(memory)}
    schedule = online_schedule if t.schedule == "online" else rounds_schedule
    return {**first, **schedule(cfg, run, problems, templates, memory)}


def total_steps(cfg: RunConfig, run: RunDir) -> int:
    """trice.max_steps, -1: the final model's (compute-matched by steps)."""
    return cfg.trice.max_steps if cfg.trice.max_steps > 0 else final_training_config(cfg, run).max_steps


def chain_state(s: dict) -> dict:
    """A chain's state after its move (a `move_chains` record), as the memory keeps it."""
    return {"trace": s["trace"], "posterior_answer": s["answer"], "finished": s["finished"],
            "state_correct": s["correct"]}


def rounds_schedule(cfg: RunConfig, run: RunDir, problems: list[Problem], templates: Templates,
                    memory: dict[str, dict]) -> dict:
    """`schedule: rounds`: each round proposes for every question with the last round's model, moves every chain and
    trains max_steps / rounds steps on the round's rows (trice/<name>/round-<r>/chain.parquet: the chains)."""
    t = cfg.trice
    by_id = {p.id: p for p in problems}
    steps = round_steps(total_steps(cfg, run), t.rounds)
    model, all_rows, rounds = policy_dir(run), [], []
    for r in range(1, t.rounds + 1):
        rel, last = f"trice/{t.name}/round-{r}", r == t.rounds
        proposals = sample_round(cfg, run, model, problems, lambda tp, p: tp.prompt(p.question), rel_dir=rel,
                                 artifact=f"{rel}/proposals.parquet", settings=t, tag=f"trice-round{r}",
                                 desc=f"TRICE round {r}: propose")
        chain = move_chains(memory, {row["question_id"]: row for row in proposals}, t.require_finished)
        run.write_rows(f"{rel}/chain.parquet", chain)
        rows = training_rows(chain, by_id, templates, round=r)
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
        memory = {s["question_id"]: chain_state(s) for s in chain}
        model = str(out)
    run.write_rows(f"train/{t.name}.parquet", all_rows)
    return {"rounds": rounds, "optimizer_steps": sum(x["optimizer_steps"] for x in rounds), "rows": len(all_rows),
            "acceptance_rate_by_round": [x["acceptance_rate"] for x in rounds],
            "correct_state_share_by_round": [x["correct_state_share"] for x in rounds],
            "mean_beta_by_round": [x["mean_beta"] for x in rounds]}


# --- the online schedule: propose for a batch, move its chains, one optimiser step (the notebook's `fit`) ------------

CHAIN_STATE = ("trace", "posterior_answer", "finished", "state_correct")


def propose(model, templates: Templates, problems: list[Problem], t: TriceConfig, batch_size: int,
            seed: int) -> dict[str, dict]:
    """One trace per problem from `model` as it is now (pi's plain prompt, no hint; trice.temperature, top_p and
    max_completion_length), stopped at the answer's close, cut and verified: the path every stage samples through
    (`sample_verified` on our HF generator: batched, left-padded, no grad, in eval mode) on the live model, counted in
    the compute account as an engine's calls are (`LazyEngine`)."""
    from varreason.backends.hf import HFGenerator

    tok = templates.tokenizer
    engine = LazyEngine(lambda: HFGenerator(model, tok, batch_size), tok, batch_size)
    out = sample_verified(engine, templates, [templates.prompt(p.question) for p in problems], problems, n=1,
                          max_new_tokens=t.max_completion_length, temperature=t.temperature, top_p=t.top_p, seed=seed)
    return {p.id: trace_row(p, 0, v[0]) for p, v in zip(problems, out, strict=True)}


def online_step(memory: dict[str, dict], proposals: dict[str, dict], micro_batches: list[list[str]],
                problems: dict[str, Problem], templates: Templates, t: TriceConfig,
                step: int) -> tuple[list[dict], list[list[dict]]]:
    """One optimiser step given its proposals: the step's chains move at once, beta leave-one-out over the step's
    questions (`move_chains`), and each micro-batch gets its questions' signed rows (`training_rows`; + their teacher
    rows with trice.mix). `memory` is updated in place; returns the step's move records and each micro-batch's rows."""
    ids = [q for batch in micro_batches for q in batch]
    moved = move_chains({q: memory[q] for q in ids}, proposals, t.require_finished)
    chain = {s["question_id"]: {"step": step, **s} for s in moved}
    memory.update({q: chain_state(s) for q, s in chain.items()})
    rows = []
    for batch in micro_batches:
        mine = training_rows([chain[q] for q in batch], problems, templates, step=step)
        if t.mix:
            mine += [teacher_row(templates, problems[q], question_id=q, step=step) for q in batch]
        rows.append(mine)
    return [chain[q] for q in ids], rows


def acceptance_and_beta(records: list[dict]) -> dict:
    """Share of the chains that moved, and the mean beta over those with a gradient (None when none had one)."""
    masked = [s["beta"] for s in records if s["correct"]]
    return {"acceptance_rate": sum(s["moved"] for s in records) / len(records) if records else None,
            "mean_beta": float(np.mean(masked)) if masked else None}


def by_window(records: list[dict], every: int) -> list[dict]:
    """acceptance_and_beta per logging window of `every` steps (steps first..last)."""
    windows = group_rows([{**s, "window": (s["step"] - 1) // every} for s in records], "window")
    return [{"steps": [min(s["step"] for s in rs), max(s["step"] for s in rs)], **acceptance_and_beta(rs)}
            for _, rs in sorted(windows.items())]


@contextlib.contextmanager
def attention_of(model, implementation: str):
    """The model with `implementation` as its attention for the block: generation needs its own (train_sft's packed
    rows use VARLEN_SDPA, which takes one packed row and no KV cache)."""
    current = model.config._attn_implementation
    if current == implementation:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def ledger() -> compute.Account:
    """The compute account so far (inside `compute.set_apart`: the training loop's, resumed part included)."""
    spent = compute.take()
    compute.add(spent)
    return spent


class Chains:
    """The online schedule's state: every chain's memory, each step's move records and the rows it trained (all kept
    in every checkpoint, so that a resumed run goes on with the very chains), and how a step's batches are made."""

    def __init__(self, cfg: RunConfig, run: RunDir, problems: list[Problem], templates: Templates,
                 memory: dict[str, dict], collator, attention: str):
        self.cfg, self.run, self.templates = cfg, run, templates
        self.memory = {q: {k: s[k] for k in CHAIN_STATE} for q, s in memory.items()}
        self.problems = {p.id: p for p in problems}
        self.collator, self.attention = collator, attention  # attention: the model's own, for generation
        self.steps: list[dict] = []  # one record per chain moved: step, verdicts, beta, weights, the proposal
        self.rows: list[dict] = []  # every row trained, with its step
        self.truncated = 0

    def step(self, model, micro_batches: list[list[str]], step: int, accelerator) -> list[dict]:
        """Step `step`'s batches: the model as it is after step - 1 proposes for the step's questions, their chains
        move, and each micro-batch's rows are tokenised and collated. With several processes each moves its own
        questions' chains (beta over its own part of the step) and all of them keep every chain."""
        ids = [q for batch in micro_batches for q in batch]
        with attention_of(model, self.attention):
            proposals = propose(model, self.templates, [self.problems[q] for q in ids], self.cfg.trice,
                                self.cfg.sample.batch_size,
                                stable_seed("trice-online", self.cfg.seed, step, accelerator.process_index))
        chain, rows = online_step(self.memory, proposals, micro_batches, self.problems, self.templates,
                                  self.cfg.trice, step)
        self.keep(chain, [r for batch in rows for r in batch], accelerator)
        return [self.batch(model, mine, batch[0]) for batch, mine in zip(micro_batches, rows, strict=True)]

    def keep(self, chain: list[dict], rows: list[dict], accelerator) -> None:
        """The step's records and rows, from every process (each moved its own chains; every one keeps them all)."""
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            chain, rows = gather_object(chain), gather_object(rows)
            self.memory.update({s["question_id"]: chain_state(s) for s in chain})
        self.steps += chain
        self.rows += rows

    def batch(self, model, rows: list[dict], first: str) -> dict:
        """A micro-batch's rows, tokenised with their signed weights and collated; their tokens count as trained. A
        micro-batch without a row (no chain in it has a gradient) trains its first chain's state at weight 0: the
        step runs, without a gradient (not counted)."""
        examples = [{k: r[k] for k in ("prompt", "completion", "weight")} for r in rows]
        if not examples:
            state = self.memory[first]
            examples = [{"prompt": self.templates.prompt(self.problems[first].question), "weight": 0.0,
                         "completion": self.templates.completion(state["trace"], state["posterior_answer"] or "")}]
        data = tokenize_examples(examples, self.templates.tokenizer, self.cfg.trice.max_length, signed=True)
        self.truncated += data.truncated
        if rows:
            lengths = [len(f["input_ids"]) for f in data.features]
            compute.record_sequences("trained", [0] * len(lengths), lengths, adapter_parameters(model))
        return self.collator(data.features)

    def save(self, folder: Path) -> None:
        """The chains, the records so far and the compute spent so far, into a checkpoint folder."""
        rel = folder.relative_to(self.run.path)
        self.run.write_rows(f"{rel}/trice_chains.parquet", self.table())
        self.run.write_rows(f"{rel}/trice_steps.parquet", self.steps)
        self.run.write_rows(f"{rel}/trice_rows.parquet", self.rows)
        self.run.write_json(f"{rel}/trice_state.json", {"compute": ledger().to_dict(), "truncated": self.truncated})

    def table(self) -> list[dict]:
        """Every chain's state, one row per question."""
        return [{"question_id": q, **s} for q, s in self.memory.items()]

    def load(self, folder: Path) -> None:
        """What `save` wrote into the checkpoint a killed run resumes from; its compute is counted again here."""
        rel = folder.relative_to(self.run.path)
        state = self.run.read_json(f"{rel}/trice_state.json")
        if state is None:
            raise InputError("this checkpoint holds no TRICE chains: remove it to start the stage over", file=str(folder))
        self.memory = {r["question_id"]: {k: r[k] for k in CHAIN_STATE}
                       for r in self.run.read_rows(f"{rel}/trice_chains.parquet")}
        self.steps = self.run.read_rows(f"{rel}/trice_steps.parquet")
        self.rows = self.run.read_rows(f"{rel}/trice_rows.parquet")
        self.truncated = state["truncated"]
        compute.add(compute.Account.from_dict(state["compute"]))


class QuestionIds(torch.utils.data.Dataset):
    """The online schedule's data set: the sampled questions' ids. `features` makes WeightedSFTTrainer order them with
    its GlobalBatchSampler: seeded epochs cut into whole optimiser steps (a step never holds a question twice)."""

    def __init__(self, ids: list[str]):
        self.features = [{"question_id": q} for q in ids]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def question_batch(items: list[dict]) -> dict:
    return {"question_id": [x["question_id"] for x in items]}


class OnlineTrainer(WeightedSFTTrainer):
    """WeightedSFTTrainer (our signed weighted loss and normaliser) whose micro-batches are made at each optimiser step
    from the live model (`Chains.step`) out of the step's question ids; the chains go into every checkpoint."""

    def __init__(self, *args, chains: Chains, **kwargs):
        super().__init__(*args, **kwargs)
        self.chains = chains

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        questions = list(itertools.islice(epoch_iterator, num_batches))
        if not questions:
            return [], None
        model = self.accelerator.unwrap_model(self.model)
        batches = self.chains.step(model, [b["question_id"] for b in questions], self.state.global_step + 1,
                                   self.accelerator)
        return batches, self._get_num_items_in_batch(batches, device)

    def _save_checkpoint(self, model, trial):
        # the chains first: the Trainer writes trainer_state.json last, which marks a checkpoint complete
        self.chains.save(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")
        super()._save_checkpoint(model, trial)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # the acceptance and beta of the steps since the last log
            since = self.state.global_step - self.args.logging_steps
            done = acceptance_and_beta([s for s in self.chains.steps if s["step"] > since])
            logs.update({k: v for k, v in done.items() if v is not None})
        super().log(logs, start_time)


def online_normalizer(t: TriceConfig, templates: Templates, memory: dict[str, dict], questions_per_step: int):
    """Dr. SFT's constant C (`normalizer: constant`) for rows made during training: the mean supervised tokens of the
    chains' first states (no step's rows are known in advance) x the rows a step can have (a memory and a proposal
    row per question, + its teacher row with mix): the notebook's mean over its 2B items, per token. None: the
    token-mean normalizer, counted per step."""
    if t.normalizer != "constant":
        return None
    tok = templates.tokenizer
    lengths = [min(t.max_length, len(tok(templates.completion(s["trace"], s["posterior_answer"] or ""),
                                         add_special_tokens=False)["input_ids"])) for s in memory.values()]
    return objectives.constant_normalizer(lengths, (2 + int(t.mix)) * questions_per_step)


def online_schedule(cfg: RunConfig, run: RunDir, problems: list[Problem], templates: Templates,
                    memory: dict[str, dict]) -> dict:
    """`schedule: online`: max_steps optimiser steps from pi0, each proposing for its batch of questions with the
    current model, moving their chains and training once on their signed rows (`OnlineTrainer`). Checkpoints every
    save_steps hold the chains; a killed stage resumes from the last one."""
    t = cfg.trice
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))
    if per_step > len(problems):
        raise InputError(f"a TRICE step takes {per_step} questions (per_device_train_batch_size x "
                         f"gradient_accumulation_steps x processes) and only {len(problems)} are sampled: a chain "
                         "would move twice in one step", field="trice.per_device_train_batch_size")
    sft = copy.deepcopy(t)
    sft.max_steps = total_steps(cfg, run)
    out_dir = run.path / "models" / t.name
    work_dir = run.path / "trice" / t.name / "online" / f".shards-{run.shard_key}" / "work"  # this config's only
    args = weighted_sft_arguments(sft, work_dir, cfg.seed)  # first: under DeepSpeed ZeRO-3 it makes the load partitioned
    model = sft_model(policy_dir(run), t.lora, cfg.seed, t.gradient_checkpointing)
    model.config.use_cache = False
    attention = model.config._attn_implementation
    if t.padding_free and attention in ("sdpa", SDPA_GQA):
        model.set_attn_implementation(VARLEN_SDPA)
    tok = templates.tokenizer
    chains = Chains(cfg, run, problems, templates, memory,
                    PackedCollator() if t.padding_free else WeightedCollator(tok.pad_token_id), attention)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.path / "logs" / t.name)
    trainer = OnlineTrainer(model=model, args=args, train_dataset=QuestionIds([p.id for p in problems]),
                            data_collator=question_batch, normalizer=t.normalizer,
                            constant=online_normalizer(t, templates, memory, per_step), chains=chains)
    trainer_output(trainer, t.name)
    resume = last_complete_checkpoint(work_dir)
    with compute.set_apart() as spent:
        if resume:
            chains.load(Path(resume))
        start = time.time()
        with no_half_checkpoint_on_a_full_disk(work_dir):
            result = trainer.train(resume_from_checkpoint=resume)
        wall = time.time() - start
    compute.add(spent[0])
    model.config.use_cache = True
    model.set_attn_implementation(attention)
    run.write_rows(f"trice/{t.name}/steps.parquet", chains.steps)
    run.write_rows(f"trice/{t.name}/chains.parquet", chains.table())
    run.write_rows(f"train/{t.name}.parquet", chains.rows)
    save_trained(trainer, tok, out_dir, work_dir, save=t.lora.save)
    leave_zero3()
    return online_counts(chains, t, per_step, result, resume, wall)


def online_counts(chains: Chains, t: TriceConfig, per_step: int, result, resume, wall: float) -> dict:
    """The manifest's counts: acceptance and mean beta overall and per logging window, the share of chains in a
    correct state at the end, the rows and their summed weights by sign."""
    weights = np.array([r["weight"] for r in chains.rows], dtype=np.float64)
    windows = by_window(chains.steps, t.logging_steps)
    return {"optimizer_steps": result.global_step, "questions_per_step": per_step, "proposals": len(chains.steps),
            **acceptance_and_beta(chains.steps),
            "correct_state_share": sum(s["state_correct"] for s in chains.memory.values()) / len(chains.memory),
            "acceptance_rate_by_window": [w["acceptance_rate"] for w in windows],
            "mean_beta_by_window": [w["mean_beta"] for w in windows], "window_steps": t.logging_steps,
            "rows": len(chains.rows), "positive_weight": float(weights[weights > 0].sum()),
            "negative_weight": float(weights[weights < 0].sum()), "truncated": chains.truncated,
            "train_loss": result.training_loss, "resumed_from": resume, "wall_seconds": wall}
