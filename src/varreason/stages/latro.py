"""LaTRO (Chen et al. 2024, arXiv 2411.04282; `../shared/reference/related-methods.md` §3; the authors' code
SalesforceAIResearch/LaTRO@ff18ac3 `LaTRO/trainer/latro_trainer.py`) as a method of `compare`:

    varreason latro   --config demo --output-dir runs/demo
    varreason compare --config demo --compare.methods "[sft, latro]"

Self-rewarding policy optimisation from pi0. Each step, K traces z_k per question from the current policy pi_theta
(no hint), each stopped at the answer marker (our `format.think_close`); reward r_k = log pi_theta(y* | x, z_k), the
reference answer written after the trace in our format, under the CURRENT policy, without gradient; a trace that
never reached the marker gets `penalty_reward_value` x the batch-mean reward; R_k = r_k - beta (log pi_theta(z_k | x)
- log pi0(z_k | x)) with sequence-level sums; RLOO advantages A_k = R_k - mean_{j != k} R_j; loss
mean(-A_k log pi_theta(z_k | x)) + sft_coef mean(-log pi_theta(y* | x, z_k)). The math: `objectives.latro_rewards`,
`objectives.rloo_advantages`.

On TRL's `RLOOTrainer` (trl/trainer/rloo_trainer.py, checked at TRL 1.16), which does most of it as LaTRO does:
sampling, the sequence-level KL to a reference model (`rewards - beta * sum_t (log pi - log pi_ref)`, first-order,
as LaTRO's `kl_coef`; the reference is built from the policy's own checkpoint, models/initial = pi0), the
leave-one-out baseline without std normalisation (`normalize_advantages=False`), one optimiser step per rollout
batch, and a loss that at `num_iterations=1` has LaTRO's gradient -A grad log pi(z) (TRL's PPO ratio is 1 then).
A reward function reads the live policy: `SelfReward` holds the trainer's model and scores the answer after each
trace with it (our `HFScorer`, at temperature 1). Where TRL falls short, `LatroTrainer` overrides three methods:
- the trace must stop at the answer marker and the policy-gradient term and the KL must cover z only: TRL stops at
  its `eos_token_ids` (from the model's generation config) and has no stop-string or custom completion mask, so the
  marker's token id is added to them while the trainer is built (the saved model's own config is untouched) and
  `_generate` cuts it off the completion (it is part of the answer the reward scores, as LaTRO's "The answer is");
- LaTRO's SFT term on y* after z (off by default, as in LaTRO's code) is not in TRL's loss: `_compute_loss` adds it;
- TRL keeps no per-trace record of the KL or the advantages: `_generate_and_score_completions` logs them beside the
  rewards (latro/<name>/rewards.parquet: step, question, reached, r, R's parts, advantage).
TRL samples and trains out of our engines' sight, so the compute account is recorded here (see `count_batch`).
The marker must be one token of the tokenizer (it is a special token in Qwen3 and our tiny tokenizer); vLLM
sampling (TRL's `use_vllm`) is not wired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from varreason import compute, objectives
from varreason.backends.hf import HFScorer
from varreason.config import LatroConfig, RunConfig
from varreason.errors import InputError
from varreason.models import load_tokenizer
from varreason.models.lora import adapter_parameters, for_training, reference_pass
from varreason.runs import RunDir
from varreason.stages.common import model_dir, sampled_questions
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import (
    last_complete_checkpoint,
    no_half_checkpoint_on_a_full_disk,
    save_trained,
    trainer_output,
    trl_arguments,
)


@dataclass(frozen=True)
class Continuation:
    """The token ids written after a trace in our format, and which of them the reward sums over."""

    ids: list[int]
    start: int  # the first summed token
    length: int  # how many are summed


def continuation(templates: Templates, answer: str, reward_tokens: str) -> Continuation:
    """think_close + answer_open + y* + answer_close (+ eos), each piece tokenised apart as the score stage does;
    `continuation` sums over all of it (LaTRO's "The answer is {y}.<eos>"), `answer` over y*'s tokens only."""
    tok, f = templates.tokenizer, templates.fmt

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    middle, body, closer = enc(f.think_close + f.answer_open), enc(str(answer)), enc(f.answer_close)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids = middle + body + closer + eos
    if reward_tokens == "answer":
        return Continuation(ids, len(middle), len(body))
    return Continuation(ids, 0, len(ids))


def stop_token_id(templates: Templates) -> int:
    """The id of format.think_close: generation stops there, so it must be one token."""
    ids = templates.tokenizer(templates.fmt.think_close, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"latro stops each trace at format.think_close ({templates.fmt.think_close!r}), which must be "
                         f"one token of the tokenizer; it is {len(ids)}: add it as a special token, or set "
                         "format.think_close to one", field="format.think_close")
    return ids[0]


class SelfReward:
    """A TRL reward function: r = log pi_theta(answer | x, z) under the policy being trained (`model`, set by
    `LatroTrainer`), with LaTRO's non-stop penalty. The trainer hands it the batch's token ids (`pending`: TRL passes
    reward functions only the completion ids, and the prompt ids are needed to score); it returns the penalised
    rewards and keeps them, per trace, for the trainer to complete with the KL and the advantage (`log`)."""

    __name__ = "self_reward"

    def __init__(self, problems: dict[str, Problem], templates: Templates, cfg: LatroConfig):
        self.cfg, self.stop_id = cfg, stop_token_id(templates)
        self.continuations = {q: continuation(templates, p.answer, cfg.reward_tokens) for q, p in problems.items()}
        self.model = None
        self.pending: tuple | None = None  # (prompt ids, trace ids as TRL trains them, reached, generated lengths)
        self.open: list[dict] = []  # this batch's rows, completed by LatroTrainer
        self.log: list[dict] = []
        self.batches = 0
        self._scorer: HFScorer | None = None

    def answer_logps(self, prompt_ids: list[list[int]], traces: list[list[int]], question_id: list[str]) -> list[float]:
        """sum of log pi_theta over each trace's answer tokens, after prompt + z (the marker cut off z if it is there)."""
        if self._scorer is None or self._scorer.model is not self.model:
            self._scorer = HFScorer(self.model, batch_size=self.cfg.per_device_train_batch_size)
        prefixes = [p + self.trace(z) for p, z in zip(prompt_ids, traces, strict=True)]
        conts = [self.continuations[q] for q in question_id]
        logps = self._scorer.score(prefixes, [c.ids for c in conts], progress=False)
        return [float(sum(lp[c.start : c.start + c.length])) for lp, c in zip(logps, conts, strict=True)]

    def trace(self, ids: list[int]) -> list[int]:
        """z: the completion without the marker that ends it (kept by TRL only when z is empty)."""
        return list(ids[:-1]) if ids and ids[-1] == self.stop_id else list(ids)

    def __call__(self, prompts=None, completions=None, completion_ids=None, question_id=None, trainer_state=None,
                 **kwargs) -> list[float]:
        if question_id is None or self.pending is None or self.model is None:
            raise ValueError("SelfReward runs inside LatroTrainer, on a dataset with a 'question_id' column")
        prompt_ids, traces, reached, generated = self.pending
        if [list(t) for t in completion_ids] != [list(t) for t in traces]:
            raise RuntimeError("SelfReward: the completions are not the batch LatroTrainer generated")
        r = self.answer_logps(prompt_ids, traces, question_id)
        penalised = objectives.latro_rewards(r, reached, non_stop_penalty=self.cfg.non_stop_penalty,
                                             penalty_reward_value=self.cfg.penalty_reward_value)
        self.count_batch(prompt_ids, traces, generated, question_id)
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        self.open = [{"batch": self.batches, "step": step, "question_id": q, "reached": bool(done),
                      "trace_tokens": len(self.trace(z)), "trace_token_ids": self.trace(z), "answer_logp": a,
                      "reward": float(p)}
                     for q, done, z, a, p in zip(question_id, reached, traces, r, penalised, strict=True)]
        self.batches += 1
        return [float(p) for p in penalised]

    def count_batch(self, prompt_ids, traces, generated, question_id) -> None:
        """The compute account of the sampling and scoring of one batch (TRL's, out of our engines' sight): each
        distinct prompt read once before sampling (its traces share one prefill, as in our engines and vLLM; every
        method counts it so) and each trace's tokens generated; the reward's forward pass over prompt + z + answer (it also holds log pi(z | x), the policy's side of
        the KL, which TRL recomputes: counted once); pi0's forward over prompt + trace for the KL when beta > 0."""
        prompts = [len(p) for p in prompt_ids]
        distinct = list({q: n for q, n in zip(question_id, prompts, strict=True)}.values())
        compute.record_sequences("prefilled", [0] * len(distinct), distinct)
        compute.record_sequences("generated", prompts, generated)
        scored = [n + len(self.trace(z)) + len(self.continuations[q].ids)
                  for n, z, q in zip(prompts, traces, question_id, strict=True)]
        compute.record_sequences("scored", [0] * len(scored), scored)
        if self.cfg.beta > 0:
            ref = [n + len(z) for n, z in zip(prompts, traces, strict=True)]
            compute.record_sequences("scored", [0] * len(ref), ref)


def _trainer_class():
    """LatroTrainer, built on first use (TRL imports vLLM when it is installed: not at module import)."""
    from trl import RLOOTrainer

    class LatroTrainer(RLOOTrainer):
        """TRL's RLOOTrainer with LaTRO's trace cut at the answer marker, its SFT term, and a per-trace log."""

        def __init__(self, *args, self_reward: SelfReward, sft_coef: float = 0.0, **kwargs):
            model, stop = kwargs["model"], self_reward.stop_id
            own = model.generation_config.eos_token_id
            eos = [] if own is None else [own] if isinstance(own, int) else list(own)
            model.generation_config.eos_token_id = [*eos, stop]  # TRL reads its eos_token_ids from here
            try:
                super().__init__(*args, **kwargs)
            finally:
                model.generation_config.eos_token_id = own  # the saved model stops where it stopped before
            if stop not in self.eos_token_ids:
                raise RuntimeError("LatroTrainer: TRL did not take the answer marker as a stop token")
            self.self_reward, self.sft_coef, self._ref_logps = self_reward, sft_coef, None
            self_reward.model = self.model
            self.adapter_params = adapter_parameters(self.model)  # LoRA: the compute account's adapter term

        def _generate(self, prompts: list):
            prompt_ids, completion_ids, completions = super()._generate(prompts)
            stop = self.self_reward.stop_id
            reached = [bool(ids) and ids[-1] == stop for ids in completion_ids]
            # z without the marker (kept for an empty z: TRL cannot pad a batch holding an empty completion)
            traces = [list(ids[:-1]) if done and len(ids) > 1 else list(ids)
                      for ids, done in zip(completion_ids, reached, strict=True)]
            self.self_reward.pending = (prompt_ids, traces, reached, [len(ids) for ids in completion_ids])
            return prompt_ids, traces, completions

        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            # pi0's per-token log-probs of the batch (with LoRA: the policy as its reference, pi0): the KL for the log
            if model is self.ref_model or reference_pass(self.accelerator.unwrap_model(model)):
                self._ref_logps = out[0]
            return out

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            kl = torch.zeros_like(out["old_logps"])
            if self.beta != 0.0 and self._ref_logps is not None:
                kl = out["old_logps"] - (self._ref_logps * out["completion_mask"]).sum(1)
            rows = self.self_reward.open
            for row, lp, k, a in zip(rows, out["old_logps"].tolist(), kl.tolist(), out["advantages"].tolist(),
                                     strict=True):
                row.update(trace_logp=lp, kl=k, total_reward=row["reward"] - self.beta * k, advantage=a)
            self.self_reward.log += rows
            self.self_reward.open, self._ref_logps = [], None
            if self.sft_coef > 0:
                out.update(answer_tensors(self.self_reward, inputs, out["completion_ids"].device))
            return out

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            lengths = inputs["prompt_mask"].sum(1) + inputs["completion_mask"].sum(1)
            if self.sft_coef > 0:
                nll, answer_lengths = answer_nll(model, inputs, self.self_reward.stop_id)
                loss = loss + self.sft_coef * nll
                lengths = lengths + answer_lengths  # one forward + backward over prompt + z + answer would do both
            n = lengths.tolist()
            compute.record_sequences("trained", [0] * len(n), n, self.adapter_params)
            return loss

    return LatroTrainer


def answer_tensors(reward: SelfReward, inputs: list[dict], device) -> dict:
    """Each trace's answer continuation as padded tensors, carried through TRL's shuffle and split with the batch."""
    conts = [reward.continuations[x["question_id"]] for x in inputs]
    width = max(len(c.ids) for c in conts)
    ids = torch.zeros((len(conts), width), dtype=torch.long)
    summed = torch.zeros((len(conts), width), dtype=torch.long)
    for i, c in enumerate(conts):
        ids[i, : len(c.ids)] = torch.tensor(c.ids, dtype=torch.long)
        summed[i, c.start : c.start + c.length] = 1
    length = torch.tensor([len(c.ids) for c in conts], dtype=torch.long)
    return {"answer_ids": ids.to(device), "answer_summed": summed.to(device), "answer_length": length.to(device)}


def answer_nll(model, inputs: dict, stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LaTRO's SFT term, mean over traces of -log pi_theta(answer | x, z), with gradient; and the answer lengths.
    prompt + z + answer right-padded into one sequence per trace (TRL keeps the prompt left-padded and z
    right-padded, so they are joined row by row)."""
    rows, labels = [], []
    for i in range(inputs["prompt_ids"].shape[0]):
        prompt = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()]
        z = inputs["completion_ids"][i][inputs["completion_mask"][i].bool()]
        if len(z) and int(z[-1]) == stop_id:
            z = z[:-1]
        n = int(inputs["answer_length"][i])
        answer = inputs["answer_ids"][i][:n]
        label = torch.where(inputs["answer_summed"][i][:n].bool(), answer, objectives.IGNORE_INDEX)
        rows.append(torch.cat([prompt, z, answer]))
        labels.append(torch.cat([torch.full((len(prompt) + len(z),), objectives.IGNORE_INDEX, device=z.device), label]))
    width = max(len(r) for r in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    target = torch.full_like(input_ids, objectives.IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(r)], target[i, : len(r)], mask[i, : len(r)] = r, lab, 1
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    nll, _ = objectives.token_nll(logits, target)
    return nll.sum(-1).mean(), inputs["answer_length"]


def rloo_config(cfg: RunConfig, work_dir, log_dir):
    """TRL's RLOOConfig from our `latro` section (same field names), LaTRO's choices fixed: one pass per batch, no
    advantage normalisation."""
    from trl import RLOOConfig

    lt = cfg.latro
    return RLOOConfig(
        **trl_arguments(lt, work_dir, log_dir, cfg.seed), num_generations=lt.num_generations,
        temperature=lt.temperature, top_p=lt.top_p, max_completion_length=lt.max_completion_length, beta=lt.beta,
        num_iterations=1, normalize_advantages=False, mask_truncated_completions=False,
    )


def stage_latro(cfg: RunConfig, run: RunDir) -> dict:
    """LaTRO from pi0 on the sampled training questions; saves models/<latro.name> and its per-trace reward log."""
    from varreason.logs import output_to_log, route_libraries

    with output_to_log():  # TRL imports vLLM when it is installed: their notices on import go to the run log
        from datasets import Dataset
    route_libraries()
    lt = cfg.latro
    init = model_dir(run, "initial")
    tokenizer = load_tokenizer(init)
    templates = Templates(cfg.format, tokenizer)
    problems = sampled_questions(cfg, run)
    if not problems:
        raise InputError("no training questions for LaTRO", file=str(run.path / "data/train.parquet"))
    dataset = Dataset.from_list([{"prompt": templates.prompt(p.question), "question_id": p.id} for p in problems])
    reward = SelfReward({p.id: p for p in problems}, templates, lt)
    out_dir = run.path / "models" / lt.name
    work_dir = out_dir.with_name(out_dir.name + ".work")
    model, adapter = for_training(init, lt.lora, reference=lt.beta > 0)
    with output_to_log():
        trainer = _trainer_class()(model=model, reward_funcs=[reward],
                                   args=rloo_config(cfg, work_dir, run.path / "logs" / lt.name),
                                   train_dataset=dataset, processing_class=tokenizer, self_reward=reward,
                                   sft_coef=lt.sft_coef, peft_config=adapter)
    trainer_output(trainer, lt.name)
    resume = last_complete_checkpoint(work_dir)
    start = time.time()
    with no_half_checkpoint_on_a_full_disk(work_dir):
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    save_trained(trainer, tokenizer, out_dir, work_dir, save=lt.lora.save)
    run.write_rows(f"latro/{lt.name}/rewards.parquet", reward.log)  # this rank's traces
    return summary(reward.log, trainer.state.log_history, result.global_step, resume, wall, lt)


def summary(log: list[dict], history: list[dict], steps: int, resume, wall: float, lt: LatroConfig) -> dict:
    """The manifest counts: how many traces reached the marker, the mean reward per step, TRL's KL history."""
    by_step: dict = {}
    for r in log:
        by_step.setdefault(r["step"], []).append(r)
    n = max(1, len(log))
    return {"optimizer_steps": steps, "traces": len(log), "reached_marker": sum(r["reached"] for r in log) / n,
            "mean_answer_logp": sum(r["answer_logp"] for r in log) / n, "beta": lt.beta, "sft_coef": lt.sft_coef,
            "reward_tokens": lt.reward_tokens, "resumed_from": resume, "wall_seconds": wall,
            "answer_logp_by_step": [(s, sum(r["answer_logp"] for r in rs) / len(rs)) for s, rs in sorted(by_step.items())],
            "kl_history": [(h["step"], h["kl"]) for h in history if "kl" in h]}
