"""The reasoning format and the cut rule on well-formed and malformed generations."""

import pytest

from varreason.config import FormatConfig
from varreason.templates import Templates

T = Templates(FormatConfig())


def test_round_trip():
    text = T.completion("12+5=17", "17", eos=False)
    cut = T.cut(text)
    assert (cut.trace, cut.answer, cut.format_ok, cut.error) == ("12+5=17", "17", True, "")


@pytest.mark.parametrize(
    "text, trace, answer, error",
    [
        ("12+5=17", "12+5=17", None, "missing think_close"),  # ran out of tokens inside the trace
        ("12+5=17<answer>17</answer>", "12+5=17", "17", "missing think_close"),
        ("12+5=17</think>17", "12+5=17", "17", "missing answer_open"),
        ("12+5=17</think><answer>17", "12+5=17", "17", "missing answer_close"),
        ("12+5=17</think><answer> 17 </answer>junk</think>", "12+5=17", "17", ""),
        ("</think><answer>17</answer>", "", "17", "empty trace"),
        ("", "", None, "missing think_close"),
        ("a</think></think><answer>1</answer>", "a", "1", ""),  # a stray second close marker is ignored
    ],
)
def test_cut_malformed(text, trace, answer, error):
    cut = T.cut(text)
    assert cut.trace == trace
    assert cut.answer == answer
    assert cut.error == error
    assert cut.format_ok == (error == "")


def test_cut_at_first_close_marker():
    cut = T.cut("x</think>y</think><answer>2</answer>")
    assert cut.trace == "x"


def test_custom_markers():
    fmt = FormatConfig(think_open="<|begin_of_thought|>", think_close="<|end_of_thought|>",
                       answer_open="<|begin_of_solution|>", answer_close="<|end_of_solution|>")
    t = Templates(fmt)
    text = t.completion("z", "y", eos=False)
    assert text == "z<|end_of_thought|><|begin_of_solution|>y<|end_of_solution|>"
    assert t.cut(text).answer == "y"
    assert t.prompt("q").endswith("<|begin_of_thought|>")


def test_posterior_formats_carry_the_hint_and_end_with_think_open():
    for kind in ("A", "B"):
        p = T.posterior_prompt("3+4=?", "7", kind)
        assert "7" in p and "3+4=?" in p and p.endswith("<think>")
    a, b = T.posterior_prompt("q", "42", "A"), T.posterior_prompt("q", "42", "B")
    assert a.index("<answer>42</answer>") < a.index("<think>")  # A: solution first, then the explanation
    assert "42" not in T.prompt("q")  # the reasoning prompt never sees the hint
    assert a != b
    with pytest.raises(ValueError):
        T.posterior_prompt("q", "1", "C")


def test_chat_template_prompt(tiny_model_dir):
    from varreason.models import load_tokenizer

    t = Templates(FormatConfig(), load_tokenizer(tiny_model_dir))
    assert t.prompt("1+1=?") == "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n<think>"
    assert t.completion("z", "2").endswith("</answer><|im_end|>")
    assert t.cut("1+1=2</think><answer>2</answer><|im_end|>garbage").answer == "2"
