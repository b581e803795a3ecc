"""On-policy self-distillation from the hinted posterior (issue 26; `../shared/reference/related-methods.md` §4) as a
method of `compare`:

    varreason posterior    --config demo --output-dir runs/demo       # q(z | x, y'): the teacher
    varreason self-distill --config demo --output-dir runs/demo       # models/<self_distill.name>
    varreason compare --config demo --compare.methods "[self-distill]"

Each step the student pi (from pi0, models/initial) samples completions for a batch of training questions from its
own prompt (no hint). The teacher q (models/posterior, frozen) reads its hinted prompt, the very prompt the posterior
stage trains it on (`templates.posterior_prompt`), followed by the student's exact completion token ids, and pi
reads its own prompt followed by the same ids. pi is trained to match q's next-token distribution at every
completion position (`objectives.self_distill_loss`): forward KL(q || pi) (`distillation_alpha: 0`), reverse
KL(pi || q) (1) or the generalised JSD between them, per token, averaged per sequence then over sequences.

Why TRL's experimental SDFTTrainer (trl/experimental/sdft/sdft_trainer.py, TRL 1.16): it samples on-policy, builds
the teacher's input as the teacher prompt's ids followed by the same completion ids (`DemonstrationTeacherContext
Builder.build`: no re-tokenisation), runs the teacher under no_grad with both sides' logits divided by the temperature
(`_forward_logits`), reduces per sequence then over sequences, and is an HF Trainer (DDP / FSDP / DeepSpeed,
checkpoints and resuming work unchanged). It falls short in four places, each a small override below:
- its teacher is always the student's own weights (`teacher_model_kind`: base, live or ema; `_setup_teacher_model`
  builds it from the student's path): ours is another model, q, which `_setup_teacher_model` loads here, frozen;
- its teacher prompt is `teacher_prompt_template.format(prompt=..., privileged_context=...)` and the template must
  hold `{prompt}` (SDFTConfig.__post_init__): the student's prompt plus the context. q's prompt is its own template,
  so the context builder takes the privileged context (q's whole hinted prompt) as the teacher's prompt;
- it tokenizes prompts with the tokenizer's special tokens (`_tokenize_prompts`); every stage here tokenizes with
  add_special_tokens=False, so the student and teacher read the ids our sampler, scorer and trainer read;
- the compute account and the per-step losses: recorded from the batches it builds and the loss it computes.
The loss is `objectives.self_distill_loss` (tested against TRL's `compute_divergence`), so the math stays in
objectives.py. TRL's GKDTrainer (trl/experimental/gkd/gkd_trainer.py) does not fit: its teacher reads the student's
own input_ids (no privileged context) and its `generalized_jsd_loss` averages over the batch's tokens, not per
sequence. Where TRL generates, it stops at the eos token only (not at the answer's close marker), as GRPO's does.

The teacher is frozen for the whole run. The issue's other choice, q trained as Algorithm 1's phi-phase, is the
posterior stage's `posterior.mode: forward_kl` (q fitted to pi0's own traces weighted by pi0's accuracy after each)
before distillation; q is not updated inside the distillation loop (see docs/baselines.md). One run; `rounds` does
not apply.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch

from varreason import compute, objectives
from varreason.backends.sampling import check_problem
from varreason.config import RunConfig
from varreason.errors import InputError
from varreason.logs import output_to_log, route_libraries
from varreason.models import load_model, load_tokenizer
from varreason.models.lora import adapter_parameters, for_training
from varreason.runs import RunDir
from varreason.stages.common import hint, model_dir, sampled_questions, trains_q
from varreason.tasks.base import Problem
from varreason.templates import Templates
from varreason.training import (
    last_complete_checkpoint,
    no_half_checkpoint_on_a_full_disk,
    save_trained,
    trainer_output,
    trl_arguments,
)

with output_to_log(), warnings.catch_warnings():  # TRL imports vLLM when installed; its "experimental" notice
    warnings.simplefilter("ignore")
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder
route_libraries()


class HintedTeacherPrompt(DemonstrationTeacherContextBuilder):
    """The teacher's prompt is the row's `privileged_context` as it is: q's whole hinted prompt, rendered by our
    templates (TRL's builder would write the student's prompt, then the context, through a template)."""

    def _compose_teacher_prompt(self, prompt, privileged_context):
        if not isinstance(privileged_context, str) or not privileged_context:
            raise ValueError("self-distillation: every row needs q's hinted prompt as its privileged_context")
        return privileged_context


class SelfDistillTrainer(SDFTTrainer):
    """TRL's SDFTTrainer with q as the frozen teacher, q's own prompt, our tokenization, our loss, and the compute
    account (see the module docstring)."""

    def __init__(self, *args, teacher_dir: str, problems: dict[str, Problem], templates: Templates, **kwargs):
        self.teacher_dir = teacher_dir  # read by _setup_teacher_model, which SDFTTrainer.__init__ calls last
        super().__init__(*args, **kwargs)
        self.teacher_context_builder = HintedTeacherPrompt(self)
        self.problems, self.templates = problems, templates
        self.loss_log: list[dict] = []  # one row per micro-batch
        self.adapter_params = adapter_parameters(self.model)  # LoRA: the compute account's adapter term
        self.sample_log: list[dict] = []  # one row per completion the student sampled

    def _setup_teacher_model(self) -> None:
        """q, frozen, placed as TRL places its own frozen teacher (ZeRO-3 / FSDP wrap it; else evaluation mode)."""
        from trl.models import prepare_deepspeed, prepare_fsdp

        teacher = load_model(self.teacher_dir, device=self.accelerator.device, dtype=self.model.dtype)
        teacher.requires_grad_(False)
        teacher.eval()
        if self.is_deepspeed_enabled:
            self.teacher_model = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            self.teacher_model = prepare_fsdp(teacher, self.accelerator)
        else:
            self.teacher_model = self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _get_teacher_context_for_self_distillation(self):
        """q is a model of its own, never the student's weights: no adapter of the student to switch (TRL's base
        teacher is the student with its LoRA adapter disabled)."""
        return contextlib.nullcontext()

    def _tokenize_prompts(self, prompts: list[str]) -> list[list[int]]:
        return self.processing_class(text=list(prompts), add_special_tokens=False)["input_ids"]

    def _prepare_training_batch(self, inputs: list[dict]) -> dict:
        """TRL's batch (the student's completions, the teacher's input), counted and its completions verified."""
        batch = super()._prepare_training_batch(inputs)
        prompt_lengths = batch["prompt_mask"].sum(-1).tolist()
        completion_lengths = batch["raw_completion_lengths"].tolist()
        compute.record_sequences("generated", prompt_lengths, completion_lengths)
        first = {}  # a prompt's copies share one prefill: counted once per distinct prompt in the batch
        for row, length in zip(inputs, prompt_lengths):
            first.setdefault(row["question_id"], length)
        compute.record_sequences("prefilled", [0] * len(first), list(first.values()))
        self.log_samples(inputs, batch["completion_ids"], completion_lengths)
        return batch

    def log_samples(self, inputs: list[dict], completion_ids: torch.Tensor, lengths: list[int]) -> None:
        """Each completion's verdict under the task's verifier (not used by the loss: how pi does on its own)."""
        eos = set(self.eos_token_ids)
        for row, ids, length in zip(inputs, completion_ids.tolist(), lengths):
            ids = ids[:length]
            text = self._tokenizer.decode(ids, skip_special_tokens=False)
            _, correct, _ = check_problem(self.problems[row["question_id"]], self.templates.cut(text), text)
            self.sample_log.append({"step": self.state.global_step, "question_id": row["question_id"],
                                    "completion_tokens": length, "finished": bool(ids) and ids[-1] in eos,
                                    "correct": bool(correct)})

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("SelfDistillTrainer returns no outputs")
        logits = self._compute_teacher_student_logits(model, self.teacher_model, inputs)
        # TRL's _forward_logits has divided both sides' logits by args.temperature already
        loss = objectives.self_distill_loss(logits.student_logits, logits.teacher_logits, logits.loss_mask,
                                            self.args.distillation_alpha)
        if model.training:
            self.account(inputs, float(loss.detach()))
        mode = "train" if model.training else "eval"
        self._log_self_distillation_metric(mode, float(loss.detach()))
        return loss / (self.current_gradient_accumulation_steps if model.training else 1.0)

    def account(self, inputs: dict, loss: float) -> None:
        """The teacher's forward pass (its prompt + the completion, read forward: "scored") and the student's
        training pass (its prompt + the completion: "trained"), and the micro-batch's loss."""
        completion = inputs["completion_mask"].sum(-1)
        teacher = inputs["teacher_attention_mask"].sum(-1).tolist()
        student = (inputs["prompt_mask"].sum(-1) + completion).tolist()
        compute.record_sequences("scored", [0] * len(teacher), teacher)
        compute.record_sequences("trained", [0] * len(student), student, self.adapter_params)
        self.loss_log.append({"step": self.state.global_step, "loss": loss, "sequences": len(student),
                              "completion_tokens": int(completion.sum())})


def sdft_config(cfg: RunConfig, work_dir, log_dir) -> SDFTConfig:
    """TRL's SDFTConfig from our `self_distill` section (same field names): full-vocabulary logits (our loss), one
    pass per batch of completions (so no importance-sampling correction is needed), prompts never truncated."""
    d = cfg.self_distill
    return SDFTConfig(
        **trl_arguments(d, work_dir, log_dir, cfg.seed), num_generations=d.num_generations,
        temperature=d.temperature, top_p=d.top_p, max_completion_length=d.max_completion_length,
        distillation_alpha=d.distillation_alpha, distillation_mode="full_logits", distillation_is_clip=None,
        num_iterations=1, max_prompt_length=None,
    )


def distill_rows(cfg: RunConfig, templates: Templates, problems: list[Problem]) -> list[dict]:
    """One row per training question: pi's prompt (no hint) and q's hinted prompt, the posterior stage's own."""
    return [{"prompt": templates.prompt(p.question),
             "privileged_context": templates.posterior_prompt(p.question, hint(cfg, p)), "question_id": p.id}
            for p in problems]


def check_same_vocabulary(student, teacher, teacher_dir: str) -> None:
    """The teacher reads the student's completion ids as they are: both must share one vocabulary."""
    if student.get_vocab() != teacher.get_vocab():
        raise InputError("q's tokenizer differs from pi0's: the teacher must read the student's token ids as they "
                         "are (train q from the same base model)", file=teacher_dir)


def stage_self_distill(cfg: RunConfig, run: RunDir) -> dict:
    """Distil q into pi on pi's own samples from pi0; saves models/<self_distill.name>, the per-step losses
    (self_distill/<name>/losses.parquet) and the student's sampled verdicts (self_distill/<name>/samples.parquet)."""
    from datasets import Dataset

    d = cfg.self_distill
    if not trains_q(cfg):
        raise InputError("self-distill's teacher is q, which `sample.proposal: prior` does not train; run it with "
                         "'--sample.proposal posterior' (compare's self-distill method keeps it)")
    student_dir, teacher_dir = model_dir(run, "initial"), model_dir(run, "posterior")
    tokenizer = load_tokenizer(student_dir)
    check_same_vocabulary(tokenizer, load_tokenizer(teacher_dir), teacher_dir)
    templates = Templates(cfg.format, tokenizer)
    problems = sampled_questions(cfg, run)
    if not problems:
        raise InputError("no training questions to distil on", file=str(run.path / "data/train.parquet"))
    out_dir = run.path / "models" / d.name
    work_dir = out_dir.with_name(out_dir.name + ".work")
    model, adapter = for_training(student_dir, d.lora)
    trainer = SelfDistillTrainer(
        model=model, args=sdft_config(cfg, work_dir, run.path / "logs" / d.name), peft_config=adapter,
        train_dataset=Dataset.from_list(distill_rows(cfg, templates, problems)), processing_class=tokenizer,
        teacher_dir=teacher_dir, problems={p.id: p for p in problems}, templates=templates)
    trainer_output(trainer, d.name)
    resume = last_complete_checkpoint(work_dir)
    start = time.time()
    with no_half_checkpoint_on_a_full_disk(work_dir):
        result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start
    save_trained(trainer, tokenizer, out_dir, work_dir, save=d.lora.save)  # every rank: ZeRO-3 / FSDP gather
    run.write_rows(f"self_distill/{d.name}/losses.parquet", trainer.loss_log)  # rank 0's micro-batches
    run.write_rows(f"self_distill/{d.name}/samples.parquet", trainer.sample_log)
    return summary_counts(cfg, trainer, result.global_step, resume, wall)


def summary_counts(cfg: RunConfig, trainer: SelfDistillTrainer, steps: int, resume, wall: float) -> dict:
    """The manifest's counts: steps, completions, the loss at the first and last step, pi's own accuracy."""
    losses, samples = trainer.loss_log, trainer.sample_log
    by_step: dict = {}
    for r in losses:
        by_step.setdefault(r["step"], []).append(r["loss"])
    curve = [(s, sum(v) / len(v)) for s, v in sorted(by_step.items())]
    return {"optimizer_steps": steps, "completions": len(samples), "distillation_alpha": cfg.self_distill.distillation_alpha,
            "temperature": cfg.self_distill.temperature, "teacher": "posterior (frozen)",
            "first_loss": curve[0][1] if curve else None, "last_loss": curve[-1][1] if curve else None,
            "loss_by_step": curve,
            "train_accuracy": sum(r["correct"] for r in samples) / max(1, len(samples)),
            "finished_share": sum(r["finished"] for r in samples) / max(1, len(samples)),
            "resumed_from": resume, "wall_seconds": wall}
