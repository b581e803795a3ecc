"""Verifier edge cases: a reward must never crash, hang, or call garbage correct."""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import threading
import time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varreason.eval import verify as V
from varreason.eval.verify import (
    Verdict,
    check_answer,
    check_integer,
    check_math,
    extract_boxed,
    guarded,
    parse_integer,
    shutdown_worker,
)

REASONS = {"correct", "wrong", "unparseable_gold", "unparseable_prediction", "timeout"}

# Makes sympy compute 9**387420489 inside math-verify's `verify`. Unbounded (math-verify called directly with
# parsing_timeout=None, timeout_seconds=None, on the 2-core CI machine) was still running after 756 s; under
# check_math it must come back as "timeout" just after timeout_s.
PATHOLOGICAL = "\\boxed{9^{9^{9}}}"


def assert_verdict(v: object) -> None:
    assert isinstance(v, Verdict)
    assert isinstance(v.correct, bool)
    assert v.reason in REASONS or v.reason.startswith("error: "), v.reason
    assert v.correct == (v.reason == "correct")


# --- the reward-hacking bug: unparseable gold is never correct (open-r1#215) ---------------------------------


@pytest.mark.parametrize(
    "gold, prediction",
    [
        ("", ""),
        ("   ", "   "),
        (None, None),
        (None, "5"),
        ("garbage", "garbage"),
        ("no answer here", "no answer here"),
        ("\\boxed{}", ""),
        ("\\boxed{}", "\\boxed{}"),
        ("$$", "$$"),
    ],
)
def test_unparseable_gold_is_never_correct(gold, prediction):
    v = check_math(gold, prediction)
    assert v == Verdict(False, "unparseable_gold")
    v = check_integer(gold, prediction)
    assert v == Verdict(False, "unparseable_gold")


def test_unparseable_prediction():
    assert check_math("\\boxed{5}", "") == Verdict(False, "unparseable_prediction")
    assert check_math("5", None) == Verdict(False, "unparseable_prediction")
    assert check_math("\\frac{1}{2}", "no idea") == Verdict(False, "unparseable_prediction")


# --- standard equivalences (reference/ecosystem.md B.4) -------------------------------------------------------


@pytest.mark.parametrize(
    "gold, prediction, correct",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("0.5", "\\boxed{\\frac{1}{2}}", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\boxed{72}", "#### 72", True),
        ("72", "The final answer is 72", True),
        ("\\boxed{3}", "<think>blah 5</think> final answer: \\boxed{3}", True),
        ("\\boxed{x^2+2x+1}", "\\boxed{(x+1)^2}", True),
        ("\\boxed{10\\%}", "\\boxed{0.1}", True),
        ("\\boxed{2}", "\\boxed{2.0}", True),
        ("\\boxed{\\frac{1}{2}}", "The answer is \\boxed{0.4}.", False),
        ("\\boxed{1/3}", "0.333", False),  # math-verify rounds to 6 digits, not 3
        ("\\boxed{72}", "#### 73", False),
        ("72", "73", False),
        ("-5", "5", False),
    ],
)
def test_standard_equivalences(gold, prediction, correct):
    v = check_math(gold, prediction)
    assert v == Verdict(correct, "correct" if correct else "wrong")


@pytest.mark.parametrize(
    "gold, prediction",
    [
        ("72", "72"),
        ("72", "73"),
        ("2", "2.0"),
        ("007", "7"),
        ("-0", "0"),
        ("-5", "5"),
        ("0.5", "0.50"),
        ("$72$", "\\boxed{72}"),
        ("12345678901234567890", "12345678901234567891"),
        ("5", ""),
        ("3.14159265", "3.1415927"),
    ],
)
def test_fast_path_agrees_with_math_verify(gold, prediction):
    fast = V._fast_reason(gold, prediction)
    if fast is not None:  # the in-process shortcut may only answer where math-verify says the same
        assert fast == V._WORKER.check(gold, prediction, timeout_s=30)


def test_fast_path_takes_plain_numbers_only():
    assert V._fast_reason("72", "\\boxed{72}") == "correct"
    assert V._fast_reason("72", "73") == "wrong"
    assert V._fast_reason("0.3333333", "0.3333334") is None  # near decimals: math-verify's rounding decides
    assert V._fast_reason("\\frac{1}{2}", "0.5") is None


# --- bounded time ---------------------------------------------------------------------------------------------


def test_pathological_input_times_out_and_worker_recovers():
    assert check_math("\\frac{1}{2}", "0.5")  # a warm worker: its start-up is not part of the bound
    timeout_s = 1.0
    t0 = time.monotonic()
    v = check_math("\\boxed{1}", PATHOLOGICAL, timeout_s=timeout_s)
    elapsed = time.monotonic() - t0
    assert v == Verdict(False, "timeout")
    assert timeout_s <= elapsed < timeout_s + 1.5
    # The next call starts a fresh worker and answers normally.
    assert check_math("\\frac{1}{2}", "0.5") == Verdict(True, "correct")
    assert check_math("\\boxed{72}", "#### 73") == Verdict(False, "wrong")


def test_worker_that_died_while_idle_is_restarted():
    assert check_math("\\frac{1}{2}", "0.5")
    V._WORKER.proc.kill()
    V._WORKER.proc.wait()
    assert check_math("\\frac{1}{2}", "0.5") == Verdict(True, "correct")


def test_shutdown_then_use_again():
    assert check_math("\\frac{1}{2}", "0.5")
    shutdown_worker()
    assert V._WORKER.proc is None
    shutdown_worker()  # idempotent
    assert check_math("\\frac{1}{2}", "0.5") == Verdict(True, "correct")


def test_bad_timeout_is_an_error_not_an_exception():
    assert check_math("\\frac{1}{2}", "0.5", timeout_s=-1).reason.startswith("error: ValueError")
    assert check_math("\\frac{1}{2}", "0.5", timeout_s="soon").reason.startswith("error: ValueError")
    assert check_math("\\frac{1}{2}", "0.5", timeout_s=math.inf).reason.startswith("error: ValueError")
    assert check_math("\\frac{1}{2}", "0.5", timeout_s=None) == Verdict(True, "correct")


# --- threads and processes (math-verify's signal.alarm fails off the main thread: Math-Verify#50) ---------


def test_check_math_in_a_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(check_math("\\boxed{\\frac{1}{2}}", "0.5")))
    t.start()
    t.join(60)
    assert out == [Verdict(True, "correct")]


def test_check_math_in_concurrent_threads():
    cases = [("\\frac{1}{2}", "0.5", True), ("\\frac{1}{3}", "0.5", False), ("$\\sqrt{4}$", "2", True)] * 4
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda c: check_math(c[0], c[1]), cases))
    assert [v.correct for v in verdicts] == [c[2] for c in cases]


@pytest.mark.parametrize("pool_kind, method", [("executor", "fork"), ("executor", "spawn"), ("mp.Pool", "fork")])
def test_check_math_in_a_process_pool_worker(pool_kind, method):
    """Also from a daemonic multiprocessing.Pool worker, which may not start multiprocessing children."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    assert check_math("\\frac{1}{2}", "0.5")  # the parent's worker is running when the pool forks
    ctx = multiprocessing.get_context(method)
    pairs = [("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{\\frac{1}{2}}", "0.4")]
    if pool_kind == "executor":
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            verdicts = [pool.submit(check_math, g, p).result(timeout=120) for g, p in pairs]
    else:
        with ctx.Pool(1) as pool:
            verdicts = pool.starmap(check_math, pairs)
    assert verdicts == [Verdict(True, "correct"), Verdict(False, "wrong")]
    assert check_math("\\frac{1}{2}", "0.5")  # and the parent's worker is still fine


def test_interrupted_call_does_not_leak_its_answer_into_the_next(monkeypatch):
    assert check_math("\\frac{1}{2}", "0.5")
    proc = V._WORKER.proc

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(V, "_read_chunk", interrupted)  # Ctrl-C while the answer ("correct") is in flight
        with pytest.raises(KeyboardInterrupt):
            check_math("\\frac{1}{2}", "0.5")
    assert V._WORKER.proc is None and proc.poll() is not None  # that worker is gone ...
    assert check_math("\\frac{1}{2}", "0.4") == Verdict(False, "wrong")  # ... so this answer is its own


# --- odd inputs -----------------------------------------------------------------------------------------------


def test_non_string_inputs():
    assert check_math(5, "5") == Verdict(True, "correct")
    assert check_math(0.5, "\\frac{1}{2}") == Verdict(True, "correct")
    assert check_math(1e20, "100000000000000000000") == Verdict(True, "correct")  # no "1e+20" (read as 1)
    assert check_math(b"\\boxed{5}", b"5") == Verdict(True, "correct")
    assert check_math(b"\xff\xfe", "5") == Verdict(False, "unparseable_gold")
    assert check_math("5", {"a": 1}).reason.startswith("error: TypeError")
    assert check_math(True, "1").reason.startswith("error: TypeError")
    assert check_math([5], "5").reason.startswith("error: TypeError")
    assert check_math(float("nan"), "5").correct is False
    assert check_math(Decimal("1E+2"), "100") == Verdict(True, "correct")


def test_huge_inputs_keep_their_tail():
    filler = "x " * 500_000
    assert check_math("\\boxed{5}", filler + "\\boxed{5}") == Verdict(True, "correct")
    assert check_math("\\boxed{5}", "\\boxed{5}" + filler).correct is False  # cut to the last 20k characters
    assert check_integer("5", filler + "5") == Verdict(True, "correct")
    assert extract_boxed("{" * 100_000) is None


@pytest.mark.parametrize(
    "text",
    ["{" * 5000, "}" * 5000, "\\frac{" * 500, "\ud800\x00\\boxed{5}", "\u0663", "$" * 1000, "\\boxed{\\boxed{\\boxed{"],
)
def test_weird_text_never_raises(text):
    for gold, prediction in [("\\boxed{5}", text), (text, "5"), (text, text)]:
        assert_verdict(check_math(gold, prediction, timeout_s=3))
        assert_verdict(check_integer(gold, prediction))


# --- integers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,234", 1234),
        ("The total is 1,234,567 apples.", 1234567),
        ("-42", -42),
        ("\u221242", -42),  # unicode minus
        ("so x = -7", -7),
        ("10-5", 5),  # a minus between digits is an operator, not a sign
        ("7.0", 7),
        ("3.5", None),  # not an integer, and not "5"
        ("answer: 42.", 42),
        ("1, 2, 3", 3),
        ("no number", None),
        ("", None),
        (None, None),
        (True, None),
        (12, 12),
        (12.0, 12),
        ("9" * 5000, None),  # over Python's 4300-digit int() limit: unparseable, no exception
    ],
)
def test_parse_integer(text, value):
    assert parse_integer(text) == value


def test_check_integer():
    assert check_integer("1234", "The answer is 1,234.") == Verdict(True, "correct")
    assert check_integer(-3, "it is -3") == Verdict(True, "correct")
    assert check_integer("-3", "it is 3") == Verdict(False, "wrong")
    assert check_integer("12", "no number here") == Verdict(False, "unparseable_prediction")
    assert check_integer("12", "12.5") == Verdict(False, "unparseable_prediction")
    assert check_integer("twelve", "12") == Verdict(False, "unparseable_gold")


# --- \boxed -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, content",
    [
        ("\\boxed{5}", "5"),
        ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{{3}}", "{3}"),  # the last box wins
        ("\\boxed{a} \\fbox{b}", "b"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\boxed{5}}", "\\boxed{5}"),  # the outer box is the top-level one
        ("\\boxed{1} and then \\boxed{2", None),  # the last box is cut off: no answer
        ("no box", None),
        ("", None),
        (None, None),
        ({"x": 1}, None),
    ],
)
def test_extract_boxed(text, content):
    assert extract_boxed(text) == content


# --- dispatch and third-party scorers -------------------------------------------------------------------------


def test_check_answer_dispatch():
    assert check_answer("1,234", "1234", kind="integer") == Verdict(True, "correct")
    assert check_answer("\\frac{1}{2}", "0.5") == Verdict(True, "correct")
    assert check_answer("\\frac{1}{2}", "0.5", kind="integer").correct is False
    v = check_answer("1", "1", kind="regex")
    assert v.correct is False and v.reason.startswith("error: unknown answer kind")


def test_guarded_scorer():
    def boom(answer, entry):
        raise KeyError("metadata")

    v = guarded(boom)("5", {})
    assert v.correct is False and v.reason.startswith("error")
    assert "KeyError" in v.reason
    assert guarded(lambda a: float("nan"))("5").reason == "error: scorer returned NaN"
    assert guarded(lambda a: math.inf)("5").reason.startswith("error")
    assert guarded(lambda a: "1.0")("5").reason.startswith("error: scorer returned a non-number")
    assert guarded(lambda a: None)("5").reason.startswith("error")
    assert guarded(lambda a: 1.0)("5") == Verdict(True, "correct")
    assert guarded(lambda a: 1)("5") == Verdict(True, "correct")
    assert guarded(lambda a: 0.01)("5") == Verdict(False, "wrong")
    assert guarded(lambda a: Verdict(False, "timeout"))("5") == Verdict(False, "timeout")


def test_guarded_scorer_timeout():
    slow = guarded(lambda a: time.sleep(2) or 1.0, timeout_s=0.2)
    t0 = time.monotonic()
    assert slow("5") == Verdict(False, "timeout")
    assert time.monotonic() - t0 < 1.0
    assert guarded(lambda a: 1.0, timeout_s=1.0)("5") == Verdict(True, "correct")
    assert guarded(lambda a: 1 / 0, timeout_s=1.0)("5").reason.startswith("error: ZeroDivisionError")


# --- properties: nothing raises -------------------------------------------------------------------------------

anything = st.one_of(
    st.text(),
    st.text(alphabet="0123456789{}\\$^_.,-+/ boxedfrac()!%"),
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(anything, anything)
def test_check_integer_never_raises(gold, prediction):
    assert_verdict(check_integer(gold, prediction))
    extract_boxed(gold)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anything, anything)
def test_check_math_never_raises(gold, prediction):
    assert_verdict(check_math(gold, prediction, timeout_s=3))
