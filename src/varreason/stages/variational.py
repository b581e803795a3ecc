"""The stages of the variational pipeline (paper §5.2): posterior, sample, score, rollout, weights, build, final,
and `matched` (sft-matched, the compute-matched SFT baseline).

    varreason posterior --config demo --output-dir runs/demo      # q: pi0 fine-tuned with the answer hint
    varreason sample    --config demo --output-dir runs/demo      # K traces per question from q
    varreason score     --config demo --output-dir runs/demo      # log-probs of each trace under pi0 and q
    varreason rollout   --config demo --output-dir runs/demo      # M answers of pi0 after each trace
    varreason weights   --config demo --output-dir runs/demo      # log rho, rho~, ESS
    varreason build     --config demo --output-dir runs/demo      # the final training set
    varreason final     --config demo --output-dir runs/demo      # weighted SFT
    varreason matched   --config demo --output-dir runs/demo      # sft-matched

Each stage reads artifacts of the run directory and writes one artifact; the math lives in `objectives.py`.
Sampling, scoring and rollouts run in shards (`RunDir.sharded`), so an interrupted stage resumes where it stopped.

Where we depart from the released scripts (see docs/variational.md):
- `accuracy` builds are written as intended (the released `build_data_Acc.py` has a commented-out line that breaks it).
- The answer term `log pi0(y* | x, z)` covers the tokens of y* only, not the markers around it: the markers are
  near-certain and would only dilute the geometric mean.
- Rollouts continue after `trace + think_close` (the released scripts append the partial marker `<|end_of`).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

from varreason import objectives
from varreason.backends.sampling import sampling_work
from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.runs import RunDir
from varreason.stages.common import (
    check_hints,
    final_training_config,
    group_rows,
    hint,
    init_path,
    load_problems,
    model_dir,
    policy_dir,
    posterior_init,
    reference_answer,
    sampled_questions,
    sft_rows,
    teacher_row,
    trains_q,
)
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import train_sft

# --- 2. posterior ---------------------------------------------------------------------------------------------------

def posterior_prompt(cfg: RunConfig, templates: Templates, p: Problem) -> str:
    return templates.posterior_prompt(p.question, hint(cfg, p))


def stage_posterior(cfg: RunConfig, run: RunDir) -> dict:
    """q_phi with the hint y' in its prompt (format A or B): SFT on the teacher traces (`mode: teacher`, the released
    recipe), or Algorithm 1's phi-phase (`mode: forward_kl`): weighted SFT on pi's own traces."""
    if not trains_q(cfg):
        return {"skipped": "sample.proposal is prior: pi0 proposes the traces, no posterior is trained"}
    init, init_name = posterior_init(cfg, run)
    problems = load_problems(run, "train")
    check_hints(cfg, problems, str(run.path / "data" / "train.parquet"))
    if cfg.posterior.mode == "forward_kl":  # the questions the theta-phase samples q for (Algorithm 1: one batch)
        rows, counts = forward_kl_rows(cfg, run, sampled_questions(cfg, run))
    else:
        templates = Templates(cfg.format, load_tokenizer(init))
        rows = [teacher_row(templates, p, prompt=posterior_prompt(cfg, templates, p)) for p in problems]
        counts = {}
    stats = train_sft(init, rows, cfg.posterior, run.path / "models" / "posterior", seed=cfg.seed,
                      log_dir=run.path / "logs" / "posterior")
    return {**stats, **counts, "init": init_name, "format": cfg.format.posterior_format,
            "mode": cfg.posterior.mode, "hint": cfg.posterior.hint}


def forward_kl_rows(cfg: RunConfig, run: RunDir, problems: list[Problem]) -> tuple[list[dict], dict]:
    """Algorithm 1's phi-phase (Eq. 9): M traces per question from pi (`policy_dir`: pi0, or round t-1's model; no hint), M' answers of pi
    after each, w_m = acc_m / sum_j acc_j within the question (`objectives.forward_kl_weights`); q's training rows
    are (hinted prompt, trace m + the reference answer) with weight w_m, rescaled to mean 1 as the weighted build.
    A question none of whose traces led to a correct answer (w undefined: 0/0) falls back to its teacher trace with
    weight 1, as the theta-phase does, and is counted (`phi_teacher_fallbacks`).

    The traces and answers are kept (phi/samples.parquet, phi/rollouts.parquet) and so are their shards until q is
    trained (`keep_shards`: the pipeline drops them once the stage is recorded), so a killed stage does not sample
    again."""
    from varreason.backends import open_engine

    with open_engine(cfg.backend_of("sample"), policy_dir(run), batch_size=cfg.sample.batch_size,
                     vllm=cfg.vllm, seed=cfg.seed) as engine:
        templates = Templates(cfg.format, engine.tokenizer)
        samples = sample_traces(cfg, run, engine, problems, lambda p: templates.prompt(p.question),
                                cfg.posterior.num_generations, shards="phi/samples", artifact="phi/samples.parquet",
                                tag="phi-sample", desc="phi: sample pi", keep_shards=True)
        rollouts = roll_out(cfg, run, engine.with_batch_size(cfg.rollout.batch_size), samples,
                            cfg.posterior.num_generations, {p.id: p for p in problems}, shards="phi/rollouts",
                            artifact="phi/rollouts.parquet", tag="phi-rollout", desc="phi: rollout pi",
                            keep_shards=True)
    by_question = group_rows(samples, "question_id")
    correct, totals = rollout_counts(rollouts)
    rows, fallbacks = [], 0
    for p in problems:
        group = sorted(by_question.get(p.id, []), key=lambda r: r["k"])
        usable = [r["finished"] or not cfg.weights.require_finished for r in group]
        counts = [correct[(p.id, r["k"])] if ok else 0 for r, ok in zip(group, usable)]
        weights, none_correct = objectives.forward_kl_weights(counts, [totals[(p.id, r["k"])] for r in group])
        prompt = posterior_prompt(cfg, templates, p)
        if none_correct:
            fallbacks += 1
            rows.append(teacher_row(templates, p, "fallback", prompt=prompt, question_id=p.id, k=-1))
            continue
        answer = reference_answer(p)
        rows += [{"prompt": prompt, "completion": templates.completion(r["trace"], answer), "weight": float(w),
                  "source": "pi", "question_id": p.id, "k": r["k"]} for r, w in zip(group, weights) if w > 0]
    for r in rows:  # mean row weight 1 (see build_rows), exactly proportional to w_m within a question
        r["weight"] *= len(rows) / len(problems)
    run.write_rows("train/posterior.parquet", rows)
    return ([{k: r[k] for k in ("prompt", "completion", "weight")} for r in rows],
            {"phi_traces": len(samples), "phi_rollouts": len(rollouts), "phi_rows": len(rows),
             "phi_teacher_fallbacks": fallbacks,
             "phi_rollout_accuracy": sum(r["correct"] for r in rollouts) / max(1, len(rollouts))})


# --- 3. sample --------------------------------------------------------------------------------------------------------

def proposal_prompt(cfg: RunConfig, templates: Templates, p: Problem) -> str:
    """The prompt the traces are sampled from: q's (with the hint), or pi0's own (no hint) for `proposal: prior`."""
    return templates.prompt(p.question) if cfg.sample.proposal == "prior" else posterior_prompt(cfg, templates, p)


def stage_sample(cfg: RunConfig, run: RunDir) -> dict:
    """K traces per question from the proposal (q, or pi0 without the hint), cut by the cut rule; the sampled token
    ids of each trace are kept, and the answer the proposal wrote after its trace is verified (`correct`)."""
    from varreason.backends import open_engine

    s = cfg.sample
    path = policy_dir(run) if s.proposal == "prior" else model_dir(run, "posterior")
    with open_engine(cfg.backend_of("sample"), path, batch_size=s.batch_size, vllm=cfg.vllm, seed=cfg.seed) as engine:
        return _sample(cfg, run, engine)


def sample_traces(cfg: RunConfig, run: RunDir, engine, problems: list[Problem], prompt_of, n: int, *, shards: str,
                  artifact: str, tag: str, desc: str, keep_shards: bool = False) -> list[dict]:
    """n traces per problem from `engine` on `prompt_of(problem)` with the `sample` settings, in resumable shards
    under `shards` merged into `artifact`: one row per trace (its text, the cut trace and its sampled token ids, the
    answer written after it and its verdict)."""
    templates = Templates(cfg.format, engine.tokenizer)

    def row(p: Problem, k: int, v) -> dict:
        g, cut = v.generation, v.cut
        trace_ids = templates.trace_token_ids(g.token_ids, cut.trace)
        return {"question_id": p.id, "k": k, "text": g.text, "trace": cut.trace, "trace_token_ids": trace_ids,
                "trace_tokens": len(trace_ids), "posterior_answer": cut.answer, "correct": v.correct,
                "finished": g.finished, "stop_reason": g.stop_reason, "format_ok": cut.format_ok,
                "format_error": cut.error}

    work = sampling_work(engine, templates, prompt_of, row, n=n, settings=cfg.sample, tag=tag, seed=cfg.seed)
    return run.sharded(shards, problems, cfg.sample.chunk_size, work, artifact=artifact, desc=desc,
                       keep_shards=keep_shards)


def _sample(cfg: RunConfig, run: RunDir, engine) -> dict:
    s = cfg.sample
    templates = Templates(cfg.format, engine.tokenizer)
    problems = sampled_questions(cfg, run)
    rows = sample_traces(cfg, run, engine, problems, lambda p: proposal_prompt(cfg, templates, p), s.num_generations,
                         shards="samples", artifact="samples/posterior.parquet", tag="sample",
                         desc="sample pi0 (no hint)" if s.proposal == "prior" else "sample q")
    by_id = {p.id: p for p in problems}
    hint_kept = sum(1 for r in rows if r["posterior_answer"] is not None
                    and str(r["posterior_answer"]).strip() == reference_answer(by_id[r["question_id"]]).strip())
    return {"questions": len(problems), "traces": len(rows),
            "finished": sum(r["finished"] for r in rows), "format_ok": sum(r["format_ok"] for r in rows),
            "correct": sum(r["correct"] for r in rows), "answer_equals_hint": hint_kept, "proposal": s.proposal,
            "mean_trace_tokens": sum(r["trace_tokens"] for r in rows) / max(1, len(rows))}


# --- 4. score ---------------------------------------------------------------------------------------------------------

def stage_score(cfg: RunConfig, run: RunDir) -> dict:
    """Per-token log-probs of every trace under pi0 (no hint) and under q (its own prompt), on the same token ids,
    and of the reference answer's tokens after the trace under pi0."""
    import contextlib

    from varreason.backends import open_engine

    c = cfg.score
    same = cfg.sample.proposal == "prior"  # the proposal is pi0 itself: q's log-probs are pi0's, the ratio is 1
    settings = {"batch_size": c.batch_size, "chunk_size": c.chunk_size, "vllm": cfg.vllm, "seed": cfg.seed,
                "share": 1.0 if same else 0.5}  # two vLLM engines are alive at once: each gets half the memory
    with contextlib.ExitStack() as stack:
        prior = stack.enter_context(open_engine(cfg.backend_of("score"), policy_dir(run), **settings))
        posterior = prior
        if not same:
            posterior_dir = model_dir(run, "posterior")
            posterior = stack.enter_context(open_engine(cfg.backend_of("score"), posterior_dir, **settings))
            if posterior.tokenizer.get_vocab() != prior.tokenizer.get_vocab():
                raise InputError("pi0 and q have different tokenizers; the same trace ids cannot be scored under both",
                                 file=posterior_dir)
        return _score(cfg, run, prior, posterior, same)


def _score(cfg: RunConfig, run: RunDir, prior, posterior, same: bool) -> dict:
    tokenizer = prior.tokenizer
    templates = Templates(cfg.format, tokenizer)

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    problems = {p.id: p for p in load_problems(run, "train")}
    samples = run.read_rows("samples/posterior.parquet", columns=["question_id", "k", "trace_token_ids"])  # no texts
    middle = enc(cfg.format.think_close + cfg.format.answer_open)
    closer = enc(cfg.format.answer_close)

    encoded: dict = {}  # question id -> (pi0 prompt, q prompt, answer) ids, tokenised once for its K traces

    def prompts_of(p: Problem) -> tuple[list[int], list[int], list[int]]:
        if p.id not in encoded:
            encoded[p.id] = (enc(templates.prompt(p.question)), enc(posterior_prompt(cfg, templates, p)),
                             enc(reference_answer(p)))
        return encoded[p.id]

    def work(chunk: list[dict], index: int) -> list[dict]:
        prior_prompts, prior_completions, q_prompts, q_completions, spans = [], [], [], [], []
        for r in chunk:
            prior_prompt, q_prompt, answer = prompts_of(problems[r["question_id"]])
            trace = list(r["trace_token_ids"])
            prior_prompts.append(prior_prompt)
            prior_completions.append(trace + middle + answer + closer)
            q_prompts.append(q_prompt)
            q_completions.append(trace)
            spans.append((len(trace), len(trace) + len(middle), len(answer)))
        prior_lp = prior.score(prior_prompts, prior_completions, progress=False)
        q_lp = ([lp[:t] for lp, (t, _, _) in zip(prior_lp, spans)] if same
                else posterior.score(q_prompts, q_completions, progress=False))
        rows = []
        for r, lp, qlp, (t, a0, n) in zip(chunk, prior_lp, q_lp, spans):
            if len(lp) < a0 + n + len(closer) or len(qlp) < t:  # longer than an engine's model: scored in part
                lp, qlp = [], []  # (vllm's length policy); no log-probs, so no weight (objectives.question_weights)
            rows.append({"question_id": r["question_id"], "k": r["k"], "trace_tokens": t,
                         "prior_logps": lp[:t], "posterior_logps": qlp, "answer_logps": lp[a0 : a0 + n],
                         "answer_tokens": n})
        return rows

    rows = run.sharded("scores", samples, max(1, cfg.sample.chunk_size * cfg.sample.num_generations), work,
                       artifact="scores/scores.parquet", desc="score pi0 & q")
    return {"traces": len(rows), "scored_tokens": sum(r["trace_tokens"] + r["answer_tokens"] for r in rows)}


# --- 5. rollout -------------------------------------------------------------------------------------------------------

def stage_rollout(cfg: RunConfig, run: RunDir) -> dict:
    """M answers of pi0 after each (question, trace), verified; and pi0's own traces (no hint) for comparison."""
    from varreason.backends import open_engine

    o = cfg.rollout
    if o.num_generations == 0 and o.prior_samples == 0:  # nothing asked for (the demo's GML estimator reads none)
        return {"rollouts": 0, "correct": 0, "prior_samples": 0, "prior_correct": 0}
    with open_engine(cfg.backend_of("rollout"), policy_dir(run), batch_size=o.batch_size, vllm=cfg.vllm,
                     seed=cfg.seed) as engine:
        return _rollout(cfg, run, engine)


def roll_out(cfg: RunConfig, run: RunDir, engine, samples: list[dict], per_question: int, problems: dict, *,
             shards: str, artifact: str, tag: str, desc: str, keep_shards: bool = False) -> list[dict]:
    """M answers (`rollout` settings) of `engine` after each sampled trace, verified, in resumable shards under
    `shards` merged into `artifact`: one row per (question, trace k, answer m)."""
    o = cfg.rollout
    templates = Templates(cfg.format, engine.tokenizer)

    def row(r: dict, m: int, v) -> dict:
        return {"question_id": r["question_id"], "k": r["k"], "m": m, "text": v.generation.text,
                "predicted": v.cut.answer, "correct": v.correct}

    work = sampling_work(engine, templates, lambda r: templates.prompt(problems[r["question_id"]].question), row,
                         n=o.num_generations, settings=o, tag=tag, seed=cfg.seed,
                         target_of=lambda r: problems[r["question_id"]],
                         prefix_of=lambda r: r["trace"] + cfg.format.think_close)  # pi0 answers after the trace
    return run.sharded(shards, samples, max(1, o.chunk_size * per_question), work, artifact=artifact, desc=desc,
                       keep_shards=keep_shards)


def _rollout(cfg: RunConfig, run: RunDir, engine) -> dict:
    o = cfg.rollout
    templates = Templates(cfg.format, engine.tokenizer)
    problems = {p.id: p for p in load_problems(run, "train")}
    counts: dict = {"rollouts": 0, "correct": 0, "prior_samples": 0, "prior_correct": 0}

    if o.num_generations > 0:
        rows = roll_out(cfg, run, engine, run.read_rows("samples/posterior.parquet"), cfg.sample.num_generations,
                        problems, shards="scores/rollouts", artifact="scores/rollouts.parquet", tag="rollout",
                        desc="rollout pi0")
        counts.update(rollouts=len(rows), correct=sum(r["correct"] for r in rows))

    if o.prior_samples > 0:
        s = cfg.sample

        def own(p: Problem, j: int, v) -> dict:
            return {"question_id": p.id, "j": j, "text": v.generation.text, "trace": v.cut.trace,
                    "trace_tokens": len(templates.trace_token_ids(v.generation.token_ids, v.cut.trace)),
                    "predicted": v.cut.answer, "correct": v.correct, "finished": v.generation.finished}

        work = sampling_work(engine.with_batch_size(s.batch_size), templates, lambda p: templates.prompt(p.question),
                             own, n=o.prior_samples, settings=s, tag="prior", seed=cfg.seed)
        rows = run.sharded("scores/prior", sampled_questions(cfg, run), s.chunk_size, work,
                           artifact="scores/prior_samples.parquet", desc="pi0's own traces")
        counts.update(prior_samples=len(rows), prior_correct=sum(r["correct"] for r in rows))
    return counts


# --- 6. weights -------------------------------------------------------------------------------------------------------

def rollout_counts(rollouts: list[dict]) -> tuple[dict, dict]:
    """Per (question, trace k): how many of the answers after the trace were verified correct, and how many there were
    (the accuracy estimator's and the phi-phase's c_k / M)."""
    correct: dict = defaultdict(int)
    totals: dict = defaultdict(int)
    for r in rollouts:
        correct[(r["question_id"], r["k"])] += int(r["correct"])
        totals[(r["question_id"], r["k"])] += 1
    return correct, totals


def compute_weights(cfg: RunConfig, scores: list[dict], samples: list[dict], rollouts: list[dict] | None) -> list[dict]:
    """weights.parquet rows from the scores (and rollouts): everything needed to recompute them is in the artifacts."""
    w = cfg.weights
    finished = {(r["question_id"], r["k"]): r["finished"] for r in samples}
    correct, totals = rollout_counts(rollouts or [])
    rows = []
    for qid, group in group_rows(scores, "question_id").items():
        group = sorted(group, key=lambda r: r["k"])[: w.num_traces]  # the first n traces (None: all K)
        keys = [(qid, r["k"]) for r in group]
        eligible = [(finished[key] or not w.require_finished)
                    and (w.max_trace_tokens is None or r["trace_tokens"] <= w.max_trace_tokens)
                    for key, r in zip(keys, group)]
        has_rollouts = rollouts is not None and all(totals[key] > 0 for key in keys)
        qw = objectives.question_weights(
            [r["prior_logps"] for r in group], [r["posterior_logps"] for r in group],
            [r["answer_logps"] for r in group],
            correct=[correct[key] for key in keys] if has_rollouts else None,
            totals=[totals[key] for key in keys] if has_rollouts else None,
            estimator=w.estimator, ratio=w.ratio, eligible=eligible)
        for r, t in zip(group, qw.traces):
            rows.append({"question_id": qid, "k": r["k"], "trace_tokens": r["trace_tokens"],
                         "log_ratio": t.log_ratio, "log_p_answer_gml": t.log_p_answer_gml,
                         "log_p_answer_likelihood": t.log_p_answer_likelihood, "accuracy": t.accuracy,
                         "log_rho": t.log_rho, "rho_tilde": t.rho_tilde, "eligible": t.eligible,
                         "best": qw.best == t.k, "ess": qw.ess, "fallback": qw.fallback})
    return rows


def stage_weights(cfg: RunConfig, run: RunDir) -> dict:
    """One row per (question, trace): log ratio, estimator terms, log rho, rho~; per question ESS and fallback."""
    rollouts = None
    if cfg.rollout.num_generations > 0:
        rollouts = run.read_rows("scores/rollouts.parquet")
    rows = compute_weights(cfg, run.read_rows("scores/scores.parquet", arrays=True),  # log-probs as float32 arrays
                           run.read_rows("samples/posterior.parquet", columns=["question_id", "k", "finished"]),
                           rollouts)
    run.write_rows("weights.parquet", rows)
    per_question = {r["question_id"]: r for r in rows}
    ess = [r["ess"] for r in per_question.values() if not r["fallback"]]
    return {"questions": len(per_question), "traces": len(rows), "estimator": cfg.weights.estimator,
            "ratio": cfg.weights.ratio, "eligible": sum(r["eligible"] for r in rows),
            "fallbacks": sum(r["fallback"] for r in per_question.values()),
            "mean_ess": sum(ess) / len(ess) if ess else 0.0}


# --- 7. build ---------------------------------------------------------------------------------------------------------

def _answers(cfg: RunConfig, p: Problem, k: int, rollouts_by_trace: dict) -> list[tuple[str, float]]:
    """(answer text, share) pairs a trace is trained with: the reference, or for `accuracy` pi0's verified answers."""
    if cfg.weights.estimator != "accuracy":
        return [(reference_answer(p), 1.0)]
    right = [r["predicted"] for r in sorted(rollouts_by_trace.get((p.id, k), []), key=lambda r: r["m"])
             if r["correct"]]
    if not right:
        return []
    if cfg.build.mode == "best":
        return [(right[0], 1.0)]  # the first verified answer, as the released build_data_Acc.py
    shares: dict = defaultdict(float)
    for a in right:
        shares[a] += 1.0 / len(right)
    return list(shares.items())


def build_rows(cfg: RunConfig, run: RunDir, templates: Templates) -> tuple[list[dict], dict]:
    """The final training set (prompt, completion, weight, source) and its counts: reads the artifacts; which traces
    enter and with which weight is `objectives.select_traces` / `objectives.mean_one`."""
    b = cfg.build
    weights = group_rows(run.read_rows("weights.parquet"), "question_id")
    traces = {(r["question_id"], r["k"]): r["trace"] for r in run.read_rows("samples/posterior.parquet")}
    rollouts_by_trace = {}
    if cfg.weights.estimator == "accuracy":
        rollouts_by_trace = group_rows(run.read_rows("scores/rollouts.parquet"), "question_id", "k")
    problems = {p.id: p for p in load_problems(run, "train")}
    rows, fallbacks, dropped, dropped_mass = [], 0, 0, 0.0
    for qid, group in weights.items():
        p = problems[qid]
        if group[0]["fallback"]:
            rows.append(teacher_row(templates, p, "fallback", question_id=qid, k=-1, rho_tilde=None))
            fallbacks += 1
            continue
        chosen, n_dropped, mass = objectives.select_traces([r["rho_tilde"] for r in group], [r["best"] for r in group],
                                                           b.mode, b.min_weight)
        dropped, dropped_mass = dropped + n_dropped, dropped_mass + mass
        for i, weight in chosen:
            r = group[i]
            for answer, share in _answers(cfg, p, r["k"], rollouts_by_trace):
                rows.append({"prompt": templates.prompt(p.question),
                             "completion": templates.completion(traces[(qid, r["k"])], answer),
                             "weight": weight * share, "source": "posterior", "question_id": qid, "k": r["k"],
                             "rho_tilde": r["rho_tilde"]})
    posterior_rows = sum(r["source"] == "posterior" for r in rows)
    questions = len(weights)
    if b.mode == "weighted" and not b.mix and rows:
        # Mean row weight 1, so the learning rate means the same as for SFT; within a question the weights stay
        # exactly proportional to rho~ (the paper scales the batch by K instead, which costs K times the compute).
        for r, w in zip(rows, objectives.mean_one([r["weight"] for r in rows], questions)):
            r["weight"] = w
    if b.mix:  # the teacher data of every training question (the paper's mix: q covers all of them, so 1:1)
        rows += [teacher_row(templates, p, question_id=p.id, k=-1, rho_tilde=None) for p in problems.values()]
    counts = {"rows": len(rows), "questions": questions, "posterior_rows": posterior_rows,
              "teacher_rows": sum(r["source"] == "teacher" for r in rows), "fallbacks": fallbacks,
              "dropped_below_min_weight": dropped, "dropped_weight_mass": dropped_mass, "mode": b.mode, "mix": b.mix}
    return rows, counts


def stage_build(cfg: RunConfig, run: RunDir) -> dict:
    rows, counts = build_rows(cfg, run, Templates(cfg.format, load_tokenizer(policy_dir(run))))
    run.write_rows("train/final.parquet", rows)
    if counts["fallbacks"] and run.ranks.main:  # on stderr with the stage lines, not amid the results on stdout
        print(f"  build: {counts['fallbacks']} of {counts['questions']} questions had no eligible trace and fell back "
              "to their teacher trace", file=sys.stderr)
    return counts


# --- 8. final and its compute-matched SFT baseline ------------------------------------------------------------------

def traces_per_question(cfg: RunConfig) -> int:
    """K: the traces per question the weights use."""
    return cfg.weights.num_traces or cfg.sample.num_generations


def stage_final(cfg: RunConfig, run: RunDir) -> dict:
    """The final reasoning model: weighted SFT on train/final.parquet, saved as models/<final.name>. With
    `build.weighted_batch: scaled` the batch is K times the configured one for the same steps (the paper's 1K recipe;
    sft-matched keeps the configured batch, as the paper's baseline), by K times the gradient accumulation: the
    memory of a micro-batch stays as configured."""
    sft = final_training_config(cfg, run)
    if cfg.build.mode == "weighted" and cfg.build.weighted_batch == "scaled":
        sft.gradient_accumulation_steps *= traces_per_question(cfg)
    rows = [{k: r[k] for k in ("prompt", "completion", "weight")} for r in run.read_rows("train/final.parquet")]
    stats = train_sft(init_path(cfg, run, cfg.final.init), rows, sft, run.path / "models" / cfg.final.name,
                      seed=cfg.seed, log_dir=run.path / "logs" / cfg.final.name)
    return {**stats, "init": cfg.final.init}


def halve_batch(sft) -> None:
    """Half the batch: the per-device batch when it is even, else the gradient accumulation (the paper presets run
    per-device batch 1); `config.validate` refuses an odd pair before any stage runs."""
    if sft.per_device_train_batch_size % 2 == 0:
        sft.per_device_train_batch_size //= 2
    else:
        sft.gradient_accumulation_steps //= 2


def stage_matched(cfg: RunConfig, run: RunDir) -> dict:
    """`sft-matched`: pi0's recipe (the teacher data) with the final model's init, optimiser steps and batch size;
    `sft-paper` (final.sft_paper): the same with half the final's batch, the paper's own comparison (its final model
    trains on the 1:1 mix with batch 192 against the baseline's 96 for the same steps: one epoch each)."""
    wanted = [name for name, on in (("sft-matched", cfg.final.sft_matched), ("sft-paper", cfg.final.sft_paper)) if on]
    if not wanted:
        return {"skipped": "final.sft_matched and final.sft_paper are false"}
    init = init_path(cfg, run, cfg.final.init)
    rows = sft_rows(load_problems(run, "train"), Templates(cfg.format, load_tokenizer(init)))
    out = {"init": cfg.final.init}
    for name in wanted:
        sft = final_training_config(cfg, run)
        if name == "sft-paper":
            halve_batch(sft)
        stats = train_sft(init, rows, sft, run.path / "models" / name, seed=cfg.seed, log_dir=run.path / "logs" / name)
        out.update(stats if name == "sft-matched" else {f"{name}_{k}": v for k, v in stats.items()})
    return out


def recompute_weights_matches(cfg: RunConfig, run: RunDir, atol: float = 1e-9) -> bool:
    """True when weights.parquet equals the weights recomputed from the scores artifact (an audit helper)."""
    stored = {(r["question_id"], r["k"]): r for r in run.read_rows("weights.parquet")}
    rollouts = run.read_rows("scores/rollouts.parquet") if cfg.rollout.num_generations > 0 else None
    fresh = compute_weights(cfg, run.read_rows("scores/scores.parquet"), run.read_rows("samples/posterior.parquet"),
                            rollouts)
    for r in fresh:
        s = stored[(r["question_id"], r["k"])]
        for name in ("log_rho", "rho_tilde", "ess"):
            a, b = r[name], s[name]
            if not (a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol)):
                return False
    return len(fresh) == len(stored)
