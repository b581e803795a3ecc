"""The math of the method as pure functions on tensors: no I/O, no models.

The weighted SFT loss and its normalizers (torch), and the importance-weight math of one question (numpy float64,
log space): log ratios, the estimators of log π(Y|x,z), ρ̃, ESS, top-1 selection, implied and forward-KL weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of next-token targets and the mask of supervised positions.

    logits [B, T, V] predict token t+1 at position t; labels [B, T] hold IGNORE_INDEX where nothing is learned.
    Returns (nll [B, T-1], mask [B, T-1]) in float32.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.clamp_min(0).reshape(-1), reduction="none"
    ).view_as(shift_labels)
    return nll * mask, mask.float()


def token_nll_chunked(hidden: torch.Tensor, lm_head, labels: torch.Tensor,
                      chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll` from the last hidden states [B, T, H] and the output layer `lm_head` (a module or any callable
    hidden -> logits), computed at the supervised positions only, `chunk_size` of them at a time.

    Why: `token_nll` holds the float32 logits and their log-softmax for backward, 2 x T x V x 4 bytes (~20 GB at
    16k tokens x 152k vocabulary, plus the model's own logits). Here each chunk's logits live only while that chunk
    is computed; backward recomputes them (`torch.utils.checkpoint`), so the extra memory is a few [chunk, V] float32
    buffers whatever T is. Values and gradients are those of `token_nll` (test).
    """
    if chunk_size < 1:
        raise ValueError(f"token_nll_chunked: chunk_size must be >= 1, got {chunk_size}")
    shift_labels = labels[:, 1:]
    mask = shift_labels.ne(IGNORE_INDEX)
    where = mask.reshape(-1).nonzero().squeeze(1)
    states = hidden[:, :-1, :].reshape(-1, hidden.shape[-1]).index_select(0, where)
    targets = shift_labels.reshape(-1).index_select(0, where)
    pieces = [torch.utils.checkpoint.checkpoint(_chunk_nll, states[s:s + chunk_size], targets[s:s + chunk_size],
                                                lm_head, use_reentrant=False)
              for s in range(0, states.shape[0], chunk_size)]
    flat = torch.zeros(mask.numel(), dtype=torch.float32, device=hidden.device)
    if pieces:
        flat = flat.index_put((where,), torch.cat(pieces))
    return flat.view_as(shift_labels), mask.float()


def _chunk_nll(states: torch.Tensor, targets: torch.Tensor, lm_head) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(lm_head(states).float(), targets, reduction="none")


def weighted_sft_loss(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, normalizer: float | torch.Tensor):
    """`sum_e w_e * sum_t nll_{e,t} / C`: the paper's weighted SFT (Algorithm 1, line 16).

    `weights` is one weight per example ([B], a padded batch) or one per token ([B, T-1], aligned with `nll`: in a
    packed row each token carries its example's weight). `normalizer` C is either a data-set constant (Dr. SFT) or
    the number of supervised tokens in the optimiser step (the usual token mean); see `constant_normalizer`.
    """
    if weights.dim() == 1:
        per_example = (nll * mask).sum(dim=-1)
        return (weights.to(per_example.dtype) * per_example).sum() / normalizer
    return (weights.to(nll.dtype) * nll * mask).sum() / normalizer


def constant_normalizer(supervised_tokens_per_example: list[int], examples_per_step: int) -> float:
    """Dr. SFT's C: mean supervised tokens per example x examples per optimiser step.

    With a constant C every token's gradient weight is the same whichever examples share its batch, so long
    traces are not down-weighted by a per-batch token mean (the released recipe's `constant_loss_normalizer`).
    """
    if not supervised_tokens_per_example or examples_per_step < 1:
        raise ValueError("constant normalizer needs at least one example and examples_per_step >= 1")
    mean_tokens = sum(supervised_tokens_per_example) / len(supervised_tokens_per_example)
    return float(mean_tokens * examples_per_step)


# ---------------------------------------------------------------------------------------------------------------
# Importance weights (paper §1.3–1.4, §3; released build_data_GML.py / build_data_Acc.py).
# Plain numpy float64 on one question at a time, all in log space. -inf is a legal value everywhere (probability 0:
# accuracy 0 of M, an ineligible trace); +inf and NaN are never legal inputs and raise ValueError.
# ---------------------------------------------------------------------------------------------------------------

RATIO_MODES = ("geometric", "exact")
ESTIMATORS = ("gml", "likelihood", "accuracy")
IMPLIED_METHODS = ("rft", "grpo", "variational")


def _logps(values: Sequence[float], name: str) -> np.ndarray:
    """Per-token log-probs as float64, rejecting NaN and +inf (a log-prob is never either)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError(f"{name}: log-probs must not contain NaN or +inf")
    return a


def log_ratio(logp_prior: Sequence[float], logp_posterior: Sequence[float], mode: str = "geometric") -> float:
    """log [π0(z|x) / q(z|x,y′)] of one trace, from the per-token log-probs of the same trace tokens.

    Only the shared length L = min(len(prior), len(posterior)) is compared, token by token (the released
    scripts' `shared_think_len`: π0 scores the think part cut at the end marker, q its whole output).
    `geometric` (the paper's choice, §3.1): mean_{t<L} (prior_t − posterior_t), the log of the per-token geometric
    mean; `exact`: the sum, the true IWAE log ratio. A prior log-prob of −inf gives −inf; a posterior log-prob of
    −inf (a token q could not have sampled) is invalid. L = 0 raises ValueError: an empty trace has no ratio, so
    callers mark it ineligible.
    """
    if mode not in RATIO_MODES:
        raise ValueError(f"ratio mode must be one of {RATIO_MODES}, got {mode!r}")
    a, b = _logps(logp_prior, "logp_prior"), _logps(logp_posterior, "logp_posterior")
    shared = min(a.size, b.size)
    if shared == 0:
        raise ValueError("log_ratio of an empty trace (shared length 0)")
    a, b = a[:shared], b[:shared]
    if np.isneginf(b).any():
        raise ValueError("logp_posterior: -inf for a token of a trace sampled from q")
    diff = a - b  # -inf where π0 gives the token probability 0; never NaN (b finite)
    return float(diff.mean() if mode == "geometric" else diff.sum())


def log_p_answer_gml(answer_logps: Sequence[float]) -> float:
    """GML estimator of log π(Y|x,z): mean token log-prob of the reference answer (log of the geometric mean), §3.3."""
    a = _logps(answer_logps, "answer_logps")
    if a.size == 0:
        raise ValueError("log_p_answer_gml of an empty answer")
    return float(a.mean())


def log_p_answer_likelihood(answer_logps: Sequence[float]) -> float:
    """Likelihood estimator of log π(Y|x,z): summed token log-prob of the reference answer (the "-L" ablation)."""
    a = _logps(answer_logps, "answer_logps")
    if a.size == 0:
        raise ValueError("log_p_answer_likelihood of an empty answer")
    return float(a.sum())


def log_p_answer_accuracy(correct: int, total: int) -> float:
    """Accuracy estimator of log π(Y|x,z): log(c/M) over M answers of π0 after (x, z), −inf when none is correct."""
    if total <= 0:
        raise ValueError(f"accuracy needs total > 0 answers, got {total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must lie in [0, {total}], got {correct}")
    return -math.inf if correct == 0 else math.log(correct / total)


def log_rho(log_ratio: float, log_p_answer: float) -> float:
    """log ρ_k = log ratio + log π̂(Y|x,z_k) (§1.4); −inf propagates (−inf + finite = −inf), +inf / NaN are invalid."""
    for name, v in (("log_ratio", log_ratio), ("log_p_answer", log_p_answer)):
        if math.isnan(v) or v == math.inf:
            raise ValueError(f"{name} must be finite or -inf, got {v}")
    return float(log_ratio + log_p_answer)  # (-inf) + (-inf) = -inf; no +inf operand, so never NaN


def _log_rhos(log_rhos: Sequence[float]) -> np.ndarray:
    """log ρ of one question as float64, rejecting NaN and +inf."""
    a = np.asarray(log_rhos, dtype=np.float64).reshape(-1)
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError("log rhos must be finite or -inf (no NaN, no +inf)")
    return a


def all_ineligible(log_rhos: Sequence[float]) -> bool:
    """True when no trace of the question has a finite log ρ: the question falls back to its teacher trace."""
    return not np.isfinite(_log_rhos(log_rhos)).any()


def normalized_weights(log_rhos: Sequence[float]) -> np.ndarray:
    """ρ̃ = softmax of log ρ within one question (self-normalised IS, §1.4), with a max shift so nothing overflows.

    −inf entries get weight 0. If every entry is −inf (see `all_ineligible`) the result is all zeros, explicitly,
    rather than 0/0; otherwise it sums to 1 (the largest entry contributes exp(0) = 1, so the sum never underflows),
    so an all-zero result means exactly "no eligible trace". An empty question gives an empty array.
    """
    a = _log_rhos(log_rhos)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a)
    shifted = np.where(finite, a - a[finite].max(), -np.inf)
    e = np.exp(shifted)
    return e / e.sum()


def effective_sample_size(weights: Sequence[float]) -> float:
    """ESS = (Σ w)² / Σ w² (Kish), = 1 / Σ w² for normalised weights: in [1, K]; 0 for all-zero weights (no trace).

    Why: a question whose ρ̃ is one-hot trains on a single trace whatever K is; the ESS says how many count.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if total == 0:
        return 0.0
    w = w / total
    return float(1.0 / np.square(w).sum())


def select_best(log_rhos: Sequence[float], eligible: Sequence[bool] | None = None) -> int | None:
    """Index of the largest finite log ρ among eligible traces (the released top-1 selection), or None when none is.

    None tells the caller to fall back to the teacher trace (and count it). Ties go to the lowest index.
    `eligible` defaults to all True; it carries the caller's filters (length cutoff, unfinished traces).
    """
    a = _log_rhos(log_rhos)
    mask = np.ones(a.size, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool).reshape(-1)
    if mask.size != a.size:
        raise ValueError(f"eligible has {mask.size} entries for {a.size} log rhos")
    mask = mask & np.isfinite(a)
    if not mask.any():
        return None
    return int(np.argmax(np.where(mask, a, -np.inf)))  # np.argmax returns the first maximum


@dataclass
class TraceWeight:
    """One posterior trace's row of weights.parquet; None where a term was not computable or not supplied."""

    k: int
    think_len: int  # shared length L = min(len prior logps, len posterior logps)
    log_ratio: float | None
    log_p_answer_gml: float | None
    log_p_answer_likelihood: float | None
    accuracy: float | None
    log_rho: float  # -inf when the trace is ineligible
    rho_tilde: float
    eligible: bool  # finite log_rho


@dataclass
class QuestionWeights:
    """The weights of one question's K traces, with its ESS, top-1 choice and teacher-fallback flag."""

    traces: list[TraceWeight]
    ess: float  # 0 when fallback
    best: int | None  # argmax ρ among eligible traces; None when fallback
    fallback: bool  # no eligible trace: use the teacher trace


def _per_trace(values, k: int, name: str) -> list:
    """Broadcast an int to K entries, or check a per-trace sequence has K entries."""
    if isinstance(values, int | np.integer):
        return [int(values)] * k
    values = list(values)
    if len(values) != k:
        raise ValueError(f"{name} has {len(values)} entries for {k} traces")
    return values


def question_weights(
    prior_logps: Sequence[Sequence[float]],
    posterior_logps: Sequence[Sequence[float]],
    answer_logps: Sequence[Sequence[float]] | None = None,
    correct: Sequence[int] | None = None,
    totals: int | Sequence[int] | None = None,
    *,
    estimator: str = "gml",
    ratio: str = "geometric",
    eligible: Sequence[bool] | None = None,
) -> QuestionWeights:
    """All weight terms of ONE question's K traces: the `weights` stage's row builder.

    prior_logps[k] / posterior_logps[k]: per-token log-probs of trace k under π0 and q; answer_logps[k]: the
    reference answer's log-probs under π0 after trace k (needed for gml / likelihood); correct[k] of totals[k]
    (an int broadcasts) answers of π0 after trace k verified correct (needed for accuracy). Every term that can be
    computed is reported; `estimator` picks the one in log ρ, `ratio` the log-ratio mode. A trace with no tokens,
    with no answer tokens under gml / likelihood, or marked False in `eligible` (caller filters such as the length
    cutoff) gets log ρ = −inf and weight 0 instead of an error.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if ratio not in RATIO_MODES:
        raise ValueError(f"ratio mode must be one of {RATIO_MODES}, got {ratio!r}")
    k = len(prior_logps)
    posterior_logps = _per_trace(posterior_logps, k, "posterior_logps")
    answers = _per_trace(answer_logps, k, "answer_logps") if answer_logps is not None else None
    if (correct is None) != (totals is None):
        raise ValueError("correct and totals go together")
    counts = _per_trace(correct, k, "correct") if correct is not None else None
    totals_k = _per_trace(totals, k, "totals") if totals is not None else None
    if estimator in ("gml", "likelihood") and answers is None:
        raise ValueError(f"estimator {estimator!r} needs answer_logps")
    if estimator == "accuracy" and counts is None:
        raise ValueError("estimator 'accuracy' needs correct and totals")
    allowed = _per_trace(eligible, k, "eligible") if eligible is not None else [True] * k

    rows = []
    for i in range(k):
        think_len = min(len(prior_logps[i]), len(posterior_logps[i]))
        lr = log_ratio(prior_logps[i], posterior_logps[i], ratio) if think_len > 0 else None
        gml = lik = acc = None
        if answers is not None and len(answers[i]) > 0:
            gml, lik = log_p_answer_gml(answers[i]), log_p_answer_likelihood(answers[i])
        log_acc = None
        if counts is not None:
            log_acc = log_p_answer_accuracy(counts[i], totals_k[i])
            acc = counts[i] / totals_k[i]
        answer_term = {"gml": gml, "likelihood": lik, "accuracy": log_acc}[estimator]
        if lr is None or answer_term is None or not allowed[i]:
            lrho = -math.inf
        else:
            lrho = log_rho(lr, answer_term)
        rows.append(TraceWeight(i, think_len, lr, gml, lik, acc, lrho, 0.0, math.isfinite(lrho)))

    lrhos = [r.log_rho for r in rows]
    w = normalized_weights(lrhos)
    for r, wi in zip(rows, w):
        r.rho_tilde = float(wi)
    best = select_best(lrhos)
    return QuestionWeights(rows, effective_sample_size(w), best, best is None)


def implied_weight(p: float, method: str) -> float:
    """Per-question weight each method puts on the forward KL to the posterior, given accuracy P (§4).

    rft: P; grpo: sqrt(P / (1 − P)) (binary-reward RL divided by the group std sqrt(P(1 − P))), 0 at P = 0 and
    +inf at P = 1 (a question the model always solves has zero reward std); variational: 1 for every question.
    Why: RFT and GRPO grow with P, i.e. favour easy questions; the log in the variational objective removes that.
    """
    if method not in IMPLIED_METHODS:
        raise ValueError(f"method must be one of {IMPLIED_METHODS}, got {method!r}")
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"accuracy P must lie in [0, 1], got {p}")
    if method == "rft":
        return float(p)
    if method == "variational":
        return 1.0
    return math.inf if p == 1.0 else math.sqrt(p / (1.0 - p))


def forward_kl_weights(correct_counts: Sequence[int], totals: int | Sequence[int]) -> tuple[np.ndarray, bool]:
    """Weights of π0's own traces for q's forward-KL step (Algorithm 1's φ-phase, §2.2): w_m = acc_m / Σ_j acc_j.

    acc_m is the fraction of π0's answers after its trace m that are correct (totals: an int broadcasts).
    Returns (weights, none_correct): when no trace has a correct answer the weights are all zero and the flag is True
    (the question teaches q nothing), rather than 0/0.
    """
    counts = list(correct_counts)
    totals_m = _per_trace(totals, len(counts), "totals")
    for c, t in zip(counts, totals_m):
        log_p_answer_accuracy(c, t)  # validates 0 <= c <= t, t > 0
    acc = np.array([c / t for c, t in zip(counts, totals_m)], dtype=np.float64)
    total = acc.sum()
    if total == 0:
        return np.zeros_like(acc), True
    return acc / total, False


# --- the training set: which traces enter it, with which weight ----------------------------------------------------

def select_traces(rho_tilde: Sequence[float], best: Sequence[bool], mode: str, min_weight: float = 0.0,
                  ) -> tuple[list[tuple[int, float]], int, float]:
    """The traces of one question that enter the final training set, as (index, row weight) pairs, and the count and
    weight mass of those dropped below `min_weight`. `best`: the trace flagged best, weight 1 (the 17K recipe);
    `weighted`: every trace with rho~ > 0, weight rho~ (the 1K recipe), except those under `min_weight`."""
    if mode == "best":
        return [(i, 1.0) for i, b in enumerate(best) if b], 0, 0.0
    if mode != "weighted":
        raise ValueError(f"mode must be 'best' or 'weighted', got {mode!r}")
    chosen, dropped, mass = [], 0, 0.0
    for i, w in enumerate(rho_tilde):
        if w <= 0.0:
            continue
        if w < min_weight:
            dropped, mass = dropped + 1, mass + w
            continue
        chosen.append((i, float(w)))
    return chosen, dropped, mass


def mean_one(weights: Sequence[float], questions: int) -> list[float]:
    """Row weights scaled by rows / questions. Each question's weights sum to 1 (normalised rho~, forward-KL's w_m, a
    fallback row's 1), so the mean row weight becomes 1 and the learning rate means what it means for SFT, while
    within a question the weights stay exactly proportional."""
    if questions <= 0:
        raise ValueError(f"questions must be > 0, got {questions}")
    scale = len(weights) / questions
    return [w * scale for w in weights]


def star_choice(own_kept: Sequence[bool], rationalized_kept: Sequence[bool]) -> tuple[str, list[int]]:
    """STaR's rows for one question: its own verified traces when it has any ("own"), else its verified
    rationalizations ("rationalized": written with the answer as a hint, trained without it), else none ("none")."""
    own = [i for i, ok in enumerate(own_kept) if ok]
    if own:
        return "own", own
    rationalized = [i for i, ok in enumerate(rationalized_kept) if ok]
    return ("rationalized", rationalized) if rationalized else ("none", [])


# --- baselines: RFT and GRPO weights, and the measured per-question weight (the bias diagnostic) -----------------

def rft_weights(num_correct: int, mode: str = "keep") -> list[float]:
    """Row weights of a question's c correct traces: `keep` 1 each (total c, i.e. ~ P: RFT's bias), `normalized`
    1/c each (total 1 for every solved question, as in the variational objective)."""
    if num_correct < 0:
        raise ValueError(f"num_correct must be >= 0, got {num_correct}")
    if mode == "keep":
        return [1.0] * num_correct
    if mode == "normalized":
        return [1.0 / num_correct] * num_correct if num_correct else []
    raise ValueError(f"mode must be 'keep' or 'normalized', got {mode!r}")


def debiased_rewards(correct: Sequence[bool], groups: Sequence) -> np.ndarray:
    """The paper's debiased reward (§4, App. A.5 with alpha=1, beta=gamma=0): 1(correct) / P̂(question), where P̂ is
    the question's accuracy among the completions of this batch (`groups` holds each completion's question).
    A question with no correct completion gets 0 everywhere (P̂ = 0: there is nothing to reweight)."""
    c = np.asarray(correct, dtype=np.float64)
    if len(c) != len(groups):
        raise ValueError(f"{len(c)} verdicts but {len(groups)} group labels")
    out = np.zeros_like(c)
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for idx in members.values():
        p = c[idx].mean()
        if p > 0:
            out[idx] = c[idx] / p
    return out


def _std(x: np.ndarray) -> float:
    """Unbiased standard deviation (TRL's `nanstd`), 0 for a single value."""
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def group_advantages(rewards: Sequence[float], group_size: int, scale: str = "group", eps: float = 1e-4) -> np.ndarray:
    """GRPO advantages as TRL computes them (`sum_then_normalize`): r minus its group mean, divided by
    (std + eps) with the group's std (`group`), the whole batch's (`batch`), or not at all (`none`)."""
    r = np.asarray(rewards, dtype=np.float64)
    if group_size < 1 or len(r) % group_size:
        raise ValueError(f"{len(r)} rewards do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    adv = g - g.mean(axis=1, keepdims=True)
    if scale == "group":
        adv = adv / (np.array([_std(row) for row in g])[:, None] + eps)
    elif scale == "batch":
        adv = adv / (_std(r) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return adv.reshape(-1)


def group_forward_kl_weight(rewards: Sequence[float], correct: Sequence[bool], scale: str = "group",
                            batch_std: float | None = None) -> float:
    """The weight one GRPO group puts on the forward-KL step towards the posterior (paper §4, Eq. 11-12).

    With rewards r_j and advantages (r_j − mean)/s, the expected policy gradient is (1/G) Σ_j r_j/s ∇log π(o_j)
    (the mean's term vanishes in expectation), and the correct completions' share of it is
    w = (1/G) Σ_{j correct} r_j / s: P for binary rewards and s = 1, √(P/(1−P)) for s = the group std,
    1 for the debiased reward. A group whose rewards are all equal has zero advantages and gets w = 0
    (no gradient), which is what the trainer does too.
    """
    r = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if len(r) != len(c) or len(r) == 0:
        raise ValueError("rewards and verdicts must be non-empty and of the same length")
    if np.all(r == r[0]):
        return 0.0
    if scale == "group":
        s = _std(r)
    elif scale == "batch":
        if batch_std is None:
            raise ValueError("scale 'batch' needs the batch's reward std")
        s = batch_std
    elif scale == "none":
        s = 1.0
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return float(r[c].sum() / len(r) / s) if s > 0 else 0.0


def fit_implied_scale(ps: Sequence[float], weights: Sequence[float], method: str) -> tuple[float, float]:
    """Least-squares c in weight ≈ c · implied_weight(P) over the points where the formula is finite, and the
    relative RMS error of that fit (0 = the measured weights follow the formula exactly). Returns (c, rel_rmse)."""
    f = np.array([implied_weight(float(p), method) for p in ps], dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(f)
    f, w = f[ok], w[ok]
    if len(f) == 0 or not np.any(f > 0):
        return math.nan, math.nan
    c = float((f * w).sum() / (f * f).sum())
    scale = float(np.sqrt(np.mean(w * w)))
    rel = float(np.sqrt(np.mean((w - c * f) ** 2)) / scale) if scale > 0 else 0.0
    return c, rel


# --- TRICE (Phan, Hoffman et al. 2023; google-research/cascades examples/notebooks/trice.ipynb, `trice_loss`) --------

TRICE_EPS = 1e-10  # the notebook's guard in the control variate's denominator


def _verdicts(proposal_correct: Sequence[bool], memory_correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(proposal_correct, dtype=bool)
    m = np.asarray(memory_correct, dtype=bool)
    if c.shape != m.shape or c.ndim != 1:
        raise ValueError(f"one verdict per chain for proposal and memory, got shapes {c.shape} and {m.shape}")
    return c, m


def trice_control_variate(proposal_correct: Sequence[bool], memory_correct: Sequence[bool]) -> np.ndarray:
    """TRICE's leave-one-out coefficient beta_n = (sum_m c_m - c_n) / (sum_m mask_m - 1 + 1e-10), mask = c or m:
    the acceptance rate among the OTHER chains that carry a gradient. Leaving chain n out keeps beta_n independent of
    its own proposal, so beta_n grad log p(z'_n | x_n) is a control variate with mean zero where the chain's memory
    was already correct. 0 where mask_n is 0: such a chain has no gradient (the notebook's formula would give a
    number there that its weights multiply by 0)."""
    c, m = _verdicts(proposal_correct, memory_correct)
    mask = c | m
    beta = (c.sum() - c.astype(np.float64)) / (mask.sum() - 1 + TRICE_EPS)
    return np.where(mask, beta, 0.0)


def trice_weights(proposal_correct: Sequence[bool], memory_correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Signed row weights of one group of chains: (memory, proposal). The memory after the move (the proposal when it
    was verified, the old trace otherwise) gets mask (1 - beta c); a rejected proposal gets -mask beta (1 - c): its
    log-likelihood is pushed down. Per chain the gradient is mask [grad log p(z~_new) - beta grad log p(z')], which
    goes to 0 as every proposal is accepted (beta -> 1): the variance vanishes as the model improves."""
    c, m = _verdicts(proposal_correct, memory_correct)
    mask = (c | m).astype(np.float64)
    beta = trice_control_variate(c, m)
    return mask * (1.0 - beta * c), 0.0 - mask * beta * (1.0 - c)  # 0.0 - x: no -0.0 where x is 0


# --- self-distillation from the hinted posterior q (on-policy; TRL experimental sdft / gkd, related-methods.md §4) ---

def _kl_from_logps(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from log-probabilities; a token with p = 0 adds 0 (never 0 * inf = nan)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def distill_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float,
                       temperature: float = 1.0) -> torch.Tensor:
    """Per position, the divergence between the teacher's next-token distribution q and the student's pi, both from
    logits divided by `temperature` ([..., V] -> [...], float32). TRL's convention (sdft `compute_divergence`, gkd
    `generalized_jsd_loss` with beta = alpha): alpha 0 is forward KL(q || pi) (mass-covering: pi must put mass
    wherever q does, the direction of the ELBO's pi-step); alpha 1 is reverse KL(pi || q) (mode-seeking); in between
    the generalised JSD, alpha KL(q || m) + (1 - alpha) KL(pi || m) with m = (1 - alpha) pi + alpha q."""
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0, got {alpha} and {temperature}")
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if alpha == 0.0:
        return _kl_from_logps(t, s)
    if alpha == 1.0:
        return _kl_from_logps(s, t)
    m = torch.logsumexp(torch.stack([s + math.log1p(-alpha), t + math.log(alpha)]), dim=0)
    return alpha * _kl_from_logps(t, m) + (1.0 - alpha) * _kl_from_logps(s, m)


def self_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, alpha: float,
                      temperature: float = 1.0) -> torch.Tensor:
    """The on-policy distillation loss of a batch: logits [B, T, V] at the completion positions (position t predicts
    completion token t), mask [B, T] 1 on real completion tokens. The per-token divergence is averaged over each
    sequence's tokens, then over sequences (TRL sdft's reduction: a long completion weighs as much as a short one,
    as every sequence of the on-policy batch is one sample of pi); a sequence without tokens adds 0."""
    mask = mask.float()
    per_token = distill_divergence(student_logits, teacher_logits, alpha, temperature) * mask
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


# --- LaTRO (Chen et al. 2024, arXiv 2411.04282; SalesforceAIResearch/LaTRO LaTRO/trainer/latro_trainer.py) -----------

def latro_rewards(answer_logps: Sequence[float], reached: Sequence[bool], kl: Sequence[float] | None = None,
                  beta: float = 0.0, non_stop_penalty: bool = True, penalty_reward_value: float = 2.0) -> np.ndarray:
    """LaTRO's self-reward of each trace of a rollout batch: r_k = log pi(y* | x, z_k) (a sum over the answer's
    tokens, under the current policy); a trace that never reached the answer marker gets `penalty_reward_value` x the
    batch mean of r (LaTRO's non_stop_penalty: `rewards.mean()` over the whole batch, those traces' own r included;
    r <= 0, so 2x the mean is worse than an average trace); then the KL penalty
    R_k = r_k - beta (log pi(z_k | x) - log pi0(z_k | x)), `kl` holding that sequence-level log ratio per trace."""
    r = np.asarray(answer_logps, dtype=np.float64)
    done = np.asarray(reached, dtype=bool)
    if r.shape != done.shape or r.ndim != 1:
        raise ValueError(f"need one reward and one reached flag per trace, got {r.shape} and {done.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("answer log-likelihoods must be finite")
    if non_stop_penalty and len(r):
        r = np.where(done, r, penalty_reward_value * r.mean())
    if kl is None:
        return r
    k = np.asarray(kl, dtype=np.float64)
    if k.shape != r.shape:
        raise ValueError(f"need one KL per trace, got {k.shape} for {r.shape} rewards")
    return r - beta * k


def rloo_advantages(rewards: Sequence[float], group_size: int) -> np.ndarray:
    """REINFORCE leave-one-out (Ahmadian et al. 2024; LaTRO, TRL's RLOOTrainer): A_k = R_k - mean_{j != k} R_j within
    each group of `group_size` consecutive traces (one question's K), with no std normalisation. Each group's
    advantages sum to 0, and a group whose rewards are all equal gets 0 everywhere."""
    r = np.asarray(rewards, dtype=np.float64)
    if group_size < 2 or r.ndim != 1 or len(r) % group_size:
        raise ValueError(f"need groups of >= 2 traces that divide the batch, got {len(r)} rewards in groups of "
                         f"{group_size}")
    groups = r.reshape(-1, group_size)
    baseline = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)
