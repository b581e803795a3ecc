"""Every training method as a declaration: where its traces come from (proposal), how they are weighted, how the
training set is built, and which config section trains the model. `varreason run` (the `variational` method, with
sft-matched and eval around it), `compare`, the bias report and the study read these; nothing dispatches on a
method's name.

A method's stages are its parts' stages in order (after data, base and initial, which every method shares), and its
config is the compare config with its parts' settings on top. Adding a method: declare it here from parts (new parts
name their stages in `stages/graph.py` and their math in `objectives.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from varreason.config import RunConfig

PI0_STAGES = ("data", "base", "initial")  # every method starts from the same pi0


@dataclass(frozen=True)
class Part:
    """One ingredient of a method: what it means, the stages it adds and the settings it fixes."""

    name: str
    about: str
    stages: tuple[str, ...] = ()
    sets: dict = field(default_factory=dict)  # section.field -> value


# where the traces come from
TEACHER = Part("teacher", "the data's teacher traces")
Q = Part("q", "q(z | x, y') with the hint in its prompt (posterior.hint: answer | solution)", ("posterior", "sample"),
         {"sample.proposal": "posterior"})
PI0 = Part("pi0", "pi0's own traces, no hint", ("sample",), {"sample.proposal": "prior"})
PI0_ONLINE = Part("pi0-online", "the policy's own completions, sampled during training (TRL)")
PI0_GREEDY = Part("pi0-greedy", "pi0's own near-greedy trace, one per question (STaR); `posterior` trains q only when "
                                "q rationalizes (star.rationalizer: q)", ("posterior", "sample"),
                  {"sample.proposal": "prior", "sample.num_generations": 1, "sample.temperature": 0.0})
TRICE_CHAIN = Part("trice-chain", "a persistent trace per question (TRICE's memory), started from q's one hinted "
                                  "trace (trice.memory_init: q | pi0 with the hint); each step the current pi proposes "
                                  "one trace for each of its questions without the hint (trice.schedule online; rounds: "
                                  "for every question each round) and the chain moves to it when it is verified",
                   ("posterior", "sample"), {"sample.proposal": "posterior", "sample.num_generations": 1})

# how a trace is weighted
UNIFORM = Part("uniform", "every row weight 1")
IMPORTANCE = Part("importance", "rho = pi0(z | x) pi0(y* | x, z) / q(z | x, y'): weights.estimator gml | accuracy | "
                                "likelihood, weights.ratio geometric | exact", ("score", "rollout", "weights"))
VERIFIED = Part("verified", "1 when the answer after the trace is verified correct (rft.mode: keep | normalized)")
REWARD = Part("reward", "the verifier's reward, group-normalised advantages (grpo.reward, grpo.scale_rewards)")
SELF_REWARD = Part("self-reward", "the policy's own answer likelihood r = log pi(y* | x, z) (latro.reward_tokens), the "
                                  "non-stop penalty, a sequence-level KL to pi0 (latro.beta), RLOO leave-one-out "
                                  "advantages (objectives.latro_rewards, rloo_advantages)")
Q_TOKENS = Part("q-tokens", "q's next-token distribution at every token of pi's completion (q reads its hinted prompt, "
                            "then pi's exact completion ids; frozen): per-token forward KL(q || pi), reverse KL(pi || q) "
                            "or generalised JSD (self_distill.distillation_alpha)", ("posterior",),
                 {"sample.proposal": "posterior"})
CONTROL_VARIATE = Part("verified-cv", "0/1 likelihood (verified) with TRICE's leave-one-out control variate beta "
                                      "(objectives.trice_weights)")

# how the training set is built
TEACHER_ROWS = Part("teacher-rows", "the teacher rows of every training question")
FROM_WEIGHTS = Part("from-weights", "build.mode best (argmax rho per question) | weighted (rho~), + the teacher "
                                    "mix (build.mix)", ("build",))
KEEP_VERIFIED = Part("keep-verified", "every verified trace, + the teacher mix (rft.mix)")
ONLINE = Part("online", "no set: the completions of each step")
CHAIN_ROWS = Part("chain-rows", "each step (online; rounds: each round) the chains it moved: each chain's trace, weight "
                                "mask (1 - beta c), and each rejected proposal, weight -mask beta (signed; no "
                                "subsampling)")
RATIONALIZED = Part("rationalized", "every verified trace; a failed question's verified rationalization (written with "
                                    "the answer as a hint) with the hint removed")


@dataclass(frozen=True)
class Training:
    """The stage that trains the method's model, the config section it reads, and the model folder it writes."""

    section: str  # initial | final | rft | grpo
    stages: tuple[str, ...] = ()
    model: Callable[[RunConfig], str] = lambda cfg: "initial"
    name_field: str | None = None  # the field a variant sets so that its model gets the variant's name
    rounds: bool = False  # Algorithm 1's rounds apply (rounds: T): the last round's model is the method's
    sets: dict = field(default_factory=dict)


PI0_TRAINING = Training("initial")
FINAL = Training("final", ("final",), lambda cfg: cfg.final.name, "final.name", rounds=True)
MATCHED = Training("final", ("matched",), lambda cfg: "sft-matched", sets={"final.sft_matched": True})
PAPER_BASELINE = Training("final", ("matched",), lambda cfg: "sft-paper", sets={"final.sft_paper": True})
RFT = Training("rft", ("rft",), lambda cfg: cfg.rft.name, "rft.name")
GRPO = Training("grpo", ("grpo",), lambda cfg: cfg.grpo.name, "grpo.name")
STAR = Training("star", ("star",), lambda cfg: cfg.star.name, "star.name")
TRICE = Training("trice", ("trice",), lambda cfg: cfg.trice.name, "trice.name")
SELF_DISTILL = Training("self_distill", ("self-distill",), lambda cfg: cfg.self_distill.name, "self_distill.name")
LATRO = Training("latro", ("latro",), lambda cfg: cfg.latro.name, "latro.name")


@dataclass(frozen=True)
class Bias:
    """Where report/bias.py measures the weight a method put on each question: its training rows (`rows`, the rows of
    the given sources) or its rollout groups' rewards (`rewards`); and which of the paper's curves it should follow."""

    formula: Callable[[RunConfig], str]
    rows: Callable[[RunConfig], str] | None = None
    sources: tuple[str, ...] = ()
    rewards: Callable[[RunConfig], str] | None = None


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    proposal: Part
    weight: Part
    build: Part
    training: Training
    sets: dict = field(default_factory=dict)  # further settings, on top of the parts'
    bias: Bias | None = None
    base: str = ""  # a variant's built-in method
    flops_of: str = ""  # its final.max_steps is chosen so its training FLOPs equal this method's own FLOPs (compare)

    @property
    def stages(self) -> tuple[str, ...]:
        """Its stages after pi0's, in order."""
        out: dict[str, None] = {}
        for part in (self.proposal, self.weight, self.build, self.training):
            out.update(dict.fromkeys(part.stages))
        return tuple(out)

    def overrides(self) -> dict:
        """section.field -> value: what the method fixes in the compare config."""
        return {**self.proposal.sets, **self.weight.sets, **self.build.sets, **self.training.sets, **self.sets}

    def model(self, cfg: RunConfig) -> str:
        """The model folder (models/<name>) the method's evaluation reads: with rounds, the last round's."""
        name = self.training.model(cfg)
        return f"{name}-round{cfg.rounds}" if self.training.rounds and cfg.rounds > 1 else name

    def variant(self, name: str, settings: dict) -> Method:
        """This method under another name with more settings (compare.variants); its model is named after it. A
        FLOPs-matched method's variant may name the method whose FLOPs it matches (`flops_of`: e.g. the rounds)."""
        settings = dict(settings)
        flops_of = settings.pop("flops_of", self.flops_of)
        if not self.flops_of and flops_of:
            raise ValueError(f"flops_of: {self.name} does not match another method's FLOPs")
        if self.flops_of and not (isinstance(flops_of, str) and flops_of):
            raise ValueError(f"flops_of must name a method, got {flops_of!r}")
        if flops_of == name:
            raise ValueError("flops_of names the variant itself")
        sets = {**self.sets, **settings}
        if self.training.name_field:
            sets[self.training.name_field] = name
        described = {**settings, "flops_of": flops_of} if flops_of != self.flops_of else settings
        return Method(name, f"{self.name} with {described}", self.proposal, self.weight, self.build, self.training,
                      sets, self.bias, self.base or self.name, flops_of)


def _rft_formula(cfg: RunConfig) -> str:
    return "variational" if cfg.rft.mode == "normalized" else "rft"


def _grpo_formula(cfg: RunConfig) -> str:
    if cfg.grpo.reward == "debiased":
        return "variational"
    return "grpo" if cfg.grpo.scale_rewards == "group" else "rft"


WEIGHTED_ROWS = Bias(lambda cfg: "variational", lambda cfg: "train/final.parquet", ("posterior", "fallback"))
RFT_ROWS = Bias(_rft_formula, lambda cfg: f"train/{cfg.rft.name}.parquet", ("rft",))
# one row per question pi0 solved or whose rationalization verified: flat (∝ 1) where rationalization fills the gaps
STAR_ROWS = Bias(lambda cfg: "variational", lambda cfg: f"train/{cfg.star.name}.parquet",
                 ("star-own", "star-rationalized"))
# the summed signed weight of a question's rows over the steps (or rounds): mask (1 - beta) each, flat (∝ 1) once its
# chain is in a correct state (the marginal likelihood's gradient)
TRICE_ROWS = Bias(lambda cfg: "variational", lambda cfg: f"train/{cfg.trice.name}.parquet",
                  ("trice-memory", "trice-proposal"))
GRPO_REWARDS = Bias(_grpo_formula, rewards=lambda cfg: f"grpo/{cfg.grpo.name}/rewards.parquet")

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("sft", "pi0: SFT on the teacher traces", TEACHER, UNIFORM, TEACHER_ROWS, PI0_TRAINING),
    Method("sft-matched", "pi0's recipe continued with the final model's init, steps and batch", TEACHER, UNIFORM,
           TEACHER_ROWS, MATCHED),
    Method("sft-matched-flops", "sft-matched with as many steps as give it the training FLOPs that variational spent "
                                "on its own stages (q, sampling, scoring, rollouts, training)", TEACHER, UNIFORM,
           TEACHER_ROWS, MATCHED, {"final.sft_paper": False}, flops_of="variational"),
    Method("sft-paper", "the paper's baseline: as sft-matched with half the final model's batch (its 192 vs 96)",
           TEACHER, UNIFORM, TEACHER_ROWS, PAPER_BASELINE),
    Method("variational", "q's hinted traces, importance-weighted (the method)", Q, IMPORTANCE, FROM_WEIGHTS, FINAL,
           bias=WEIGHTED_ROWS),
    Method("no-hint", "the paper's w/o y': pi0's own traces, the same estimator and build", PI0, IMPORTANCE,
           FROM_WEIGHTS, FINAL, {"final.name": "no-hint"}, WEIGHTED_ROWS),
    Method("rft", "pi0's own traces, verified; correct ones kept; SFT", PI0, VERIFIED, KEEP_VERIFIED, RFT,
           bias=RFT_ROWS),
    Method("star", "STaR: pi0's greedy trace, failures rationalized with the answer as a hint; verified; SFT without "
                   "the hint", PI0_GREEDY, VERIFIED, RATIONALIZED, STAR, bias=STAR_ROWS),
    Method("trice", "TRICE: MCMC-EM over a persistent trace per question started from q's hinted trace; pi proposes, "
                    "the chain moves when verified; signed SFT with a leave-one-out control variate", TRICE_CHAIN,
           CONTROL_VARIATE, CHAIN_ROWS, TRICE, bias=TRICE_ROWS),
    # no bias curve: the loss is a per-token divergence to q on every sampled completion, with no per-question weight
    Method("self-distill", "on-policy self-distillation: pi0 samples from its own prompt, q reads its hinted prompt + "
                           "the same completion ids, pi matches q token by token (TRL sdft)", PI0_ONLINE, Q_TOKENS,
           ONLINE, SELF_DISTILL),
    # no bias curve: the reward is a likelihood, not a verdict, so there is no per-question accuracy to weigh by
    Method("latro", "LaTRO: pi samples K traces, rewarded by its own log pi(y* | x, z), KL to pi0, RLOO (TRL RLOO)",
           PI0_ONLINE, SELF_REWARD, ONLINE, LATRO),
    Method("grpo", "TRL GRPO from pi0, verifier reward", PI0_ONLINE, REWARD, ONLINE, GRPO,
           {"grpo.reward": "binary", "grpo.name": "grpo"}, GRPO_REWARDS),
    Method("grpo-debiased", "GRPO with the paper's debiased reward 1(correct)/P̂ (§4; untested in the paper)",
           PI0_ONLINE, REWARD, ONLINE, GRPO,
           {"grpo.reward": "debiased", "grpo.scale_rewards": "none", "grpo.name": "grpo-debiased"}, GRPO_REWARDS),
]}
