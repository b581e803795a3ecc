"""The baselines the method is judged against: RFT (rejection-sampling fine-tuning) and GRPO (TRL's trainer with our
verifier as the reward). `sft` and `sft-matched` are stages of the main pipeline; the "w/o y'" ablation (`no-hint`)
is the variational pipeline with `sample.proposal: prior`.

    varreason sample --config demo --output-dir runs/rft --sample.proposal prior   # pi0's own traces, verified
    varreason rft    --config demo --output-dir runs/rft --sample.proposal prior
    varreason grpo   --config demo --output-dir runs/demo
    varreason compare --config demo --output-dir runs/compare                     # every method, side by side

RFT: pi0's own traces (no hint), verified; the correct ones are kept and the model is fine-tuned on them. The traces
are the `sample` stage's with `sample.proposal: prior` (K per question at the sampling temperature), so RFT and the
no-hint ablation read the same samples. Paper §4: RFT is a forward-KL step towards pi0's posterior weighted by pi0's
accuracy P on each question (`keep`: a question with c of K correct traces gets c rows); `normalized` divides by c so
every solved question weighs 1, as the variational objective does.

GRPO from pi0 on TRL's `GRPOTrainer`, with our verifier as the reward. Why TRL: it is what our users run GRPO with;
we add only the reward (our task verifiers, which never raise) and CPU-safe defaults (fp32, no gradient
checkpointing: TRL's defaults are ~10x slower on CPU). `grpo.reward: debiased` is the paper's proposed reward (§4):
1(correct) divided by the question's accuracy in the batch, which turns the per-question weight sqrt(P/(1-P))
(binary reward, group std) into 1. The paper proposes it and never tests it. Every reward given is logged
(`grpo/<name>/rewards.parquet`: batch, step, question, verdict, reward) so the per-question weight GRPO really
applied can be measured afterwards (`compare`'s bias diagnostic).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from varreason import compute, objectives
from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.models.lora import adapter_parameters, for_training
from varreason.runs import RunDir
from varreason.stages.common import (
    final_training_config,
    group_rows,
    init_path,
    load_problems,
    model_dir,
    sampled_questions,
    teacher_row,
)
from varreason.tasks import score_problem
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import (
    last_complete_checkpoint,
    no_half_checkpoint_on_a_full_disk,
    save_trained,
    train_sft,
    trainer_output,
    trl_arguments,
)

# --- RFT --------------------------------------------------------------------------------------------------------------

def rft_rows(cfg: RunConfig, samples: list[dict], problems: dict, templates: Templates) -> tuple[list[dict], dict]:
    """Training rows (prompt, completion, weight, source, question_id, k) from verified samples, and counts."""
    r = cfg.rft
    rows, solved = [], 0
    for qid, group in group_rows(samples, "question_id").items():
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
        rows += [teacher_row(templates, p, question_id=p.id, k=-1) for p in problems.values()]
    questions = len({s["question_id"] for s in samples})
    return rows, {"questions": questions, "solved_questions": solved, "kept_traces": kept_rows,
                  "sampled_traces": len(samples), "rows": len(rows), "mode": r.mode, "mix": r.mix}


def stage_rft(cfg: RunConfig, run: RunDir) -> dict:
    """Build train/<rft.name>.parquet from pi0's verified traces and fine-tune models/<rft.name> on it."""
    if cfg.sample.proposal != "prior":
        raise InputError("rft trains on pi0's own traces: run it with '--sample.proposal prior' (the `sample` stage "
                         "then samples pi0 without the hint)")
    init = init_path(cfg, run, cfg.rft.init)
    templates = Templates(cfg.format, load_tokenizer(model_dir(run, "initial")))
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


# --- GRPO -------------------------------------------------------------------------------------------------------------

class VerifierReward:
    """A TRL reward function: 1.0 when the answer after the trace verifies against the question's gold, else 0.0.

    The completion is decoded from its token ids with the special tokens kept (TRL's `completions` text drops them,
    and the format markers are special tokens here), then cut by the format's cut rule. No answer, an unparseable
    gold, or a scorer that raises all give 0.0: a reward function must never reward what it could not check.
    """

    def __init__(self, problems: dict[str, Problem], templates: Templates, tokenizer, mode: str = "binary",
                 scorer: Callable | None = None, passes: int = 1, reference: bool = False):
        if mode not in ("binary", "debiased"):
            raise ValueError(f"mode must be 'binary' or 'debiased', got {mode!r}")
        self.problems, self.templates, self.tokenizer, self.mode = problems, templates, tokenizer, mode
        self.passes, self.reference = passes, reference  # for the compute account (`count_batch`)
        self.adapter_params: int | None = None  # LoRA: the adapter's size, set once the trainer has wrapped the model
        self.scorer = scorer or score_problem
        self.__name__ = "verifier" if mode == "binary" else "verifier_debiased"
        self.log: list[dict] = []
        self.batches = 0

    def verdict(self, question_id: str, text: str) -> bool:
        cut = self.templates.cut(text)
        if cut.answer is None:
            return False
        try:
            v = self.scorer(self.problems[question_id], cut.answer)
            return bool(v is not None and v.correct is True)
        except Exception:  # noqa: BLE001 - a raising scorer is a zero reward, never a crash mid-training
            return False

    def __call__(self, prompts=None, completions=None, completion_ids=None, question_id=None, trainer_state=None,
                 **kwargs) -> list[float]:
        if question_id is None:
            raise ValueError("VerifierReward needs the dataset's 'question_id' column")
        if completion_ids is not None:
            texts = [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in completion_ids]
        else:
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        correct = [self.verdict(q, t) for q, t in zip(question_id, texts)]
        if prompts is not None and completion_ids is not None:
            self.count_batch(prompts, completion_ids)
        if self.mode == "debiased":
            rewards = [float(r) for r in objectives.debiased_rewards(correct, question_id)]
        else:
            rewards = [float(c) for c in correct]
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        for q, c, r in zip(question_id, correct, rewards):
            self.log.append({"batch": self.batches, "step": step, "question_id": q, "correct": c, "reward": r})
        self.batches += 1
        return rewards


    def count_batch(self, prompts: list, completion_ids: list[list[int]]) -> None:
        """The compute account of one GRPO batch, which TRL generates and trains on out of our engines' sight: each
        distinct prompt read once (a group's completions share one prefill, as in our engines and vLLM; every method
        counts it so), each completion's tokens generated, the reference model's forward pass when beta > 0, and
        prompt + completion trained once per optimisation pass."""
        texts = [p if isinstance(p, str) else self.tokenizer.apply_chat_template(p, tokenize=False) for p in prompts]
        prompt_lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        lengths = [len(ids) for ids in completion_ids]
        distinct = list(dict(zip(texts, prompt_lengths, strict=True)).values())
        compute.record_sequences("prefilled", [0] * len(distinct), distinct)
        compute.record_sequences("generated", prompt_lengths, lengths)
        whole = [p + n for p, n in zip(prompt_lengths, lengths, strict=True)]
        if self.reference:
            compute.record_sequences("scored", [0] * len(whole), whole)
        for _ in range(self.passes):
            compute.record_sequences("trained", [0] * len(whole), whole, self.adapter_params)


def grpo_config(cfg: RunConfig, work_dir, log_dir):
    """TRL's GRPOConfig from our `grpo` section (same field names)."""
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        **trl_arguments(g, work_dir, log_dir, cfg.seed), num_generations=g.num_generations, temperature=g.temperature,
        top_p=g.top_p, max_completion_length=g.max_completion_length, beta=g.beta, epsilon=g.epsilon,
        loss_type=g.loss_type, scale_rewards=g.scale_rewards, num_iterations=g.num_iterations,
        mask_truncated_completions=g.mask_truncated_completions,
    )


def stage_grpo(cfg: RunConfig, run: RunDir) -> dict:
    """GRPO of pi0 on the sampled training questions; saves models/<grpo.name> and its reward log."""
    from varreason.logs import output_to_log, route_libraries

    with output_to_log():  # TRL imports vLLM when it is installed: their notices on import go to the run log
        from datasets import Dataset
        from trl import GRPOTrainer
    route_libraries()  # and their loggers' later lines
    g = cfg.grpo
    init = model_dir(run, "initial")
    tokenizer = load_tokenizer(init)
    templates = Templates(cfg.format, tokenizer)
    problems = sampled_questions(cfg, run)
    if not problems:
        raise InputError("no training questions for GRPO", file=str(run.path / "data/train.parquet"))
    dataset = Dataset.from_list([{"prompt": templates.prompt(p.question), "question_id": p.id} for p in problems])
    reward = VerifierReward({p.id: p for p in problems}, templates, tokenizer, mode=g.reward,
                            passes=g.num_iterations, reference=g.beta > 0)
    out_dir = run.path / "models" / g.name
    work_dir = out_dir.with_name(out_dir.name + ".work")
    model, adapter = for_training(init, g.lora, reference=g.beta > 0)  # float32 masters; the Trainer places them
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_config(cfg, work_dir, run.path / "logs" / g.name),
                          train_dataset=dataset, processing_class=tokenizer, peft_config=adapter)
    reward.adapter_params = adapter_parameters(trainer.model)
    trainer_output(trainer, g.name)
    resume = last_complete_checkpoint(work_dir)
    start = time.time()
    with no_half_checkpoint_on_a_full_disk(work_dir):
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    save_trained(trainer, tokenizer, out_dir, work_dir, save=g.lora.save)  # every rank: ZeRO-3 / FSDP gather
    run.write_rows(f"grpo/{g.name}/rewards.parquet", reward.log)  # rank 0's completions (see the module docstring)
    history = [h for h in trainer.state.log_history if "reward" in h]
    by_step: dict = {}
    for r in reward.log:
        by_step.setdefault(r["step"], []).append(r["correct"])
    return {"optimizer_steps": result.global_step, "completions": len(reward.log),
            "train_accuracy": sum(r["correct"] for r in reward.log) / max(1, len(reward.log)), "reward": g.reward,
            "scale_rewards": g.scale_rewards, "loss_type": g.loss_type, "resumed_from": resume, "wall_seconds": wall,
            "reward_history": [(h["step"], h["reward"]) for h in history],
            "accuracy_by_step": [(s, sum(c) / len(c)) for s, c in sorted(by_step.items())]}
