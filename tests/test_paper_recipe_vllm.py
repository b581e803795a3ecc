"""The paper's recipe in miniature on vLLM (tests/test_paper_recipe.py says what it checks): in a file of its own so
that a second test worker runs it beside the hf one, from the same trained folder."""

from __future__ import annotations

import pytest
from test_paper_recipe import data_file, run_the_rest, trained  # noqa: F401 (fixtures)


@pytest.mark.slow
def test_paper_recipe_in_miniature_on_vllm(trained, data_file, tmp_path):  # noqa: F811
    pytest.importorskip("vllm")
    run_the_rest(trained, data_file, tmp_path, "vllm")
