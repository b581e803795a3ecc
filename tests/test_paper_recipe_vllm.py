"""The paper's recipe in miniature on vLLM (tests/test_paper_recipe.py says what it checks): in a file of its own so
that a second test worker can run it beside the hf one (`--dist loadfile` hands out whole files), from the same trained
folder."""

from __future__ import annotations

import importlib.util

import pytest
from test_paper_recipe import data_file, run_the_rest, trained  # noqa: F401 (fixtures)

# skipped before `trained` trains (an importorskip here would import vLLM in every test worker at collection)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


@pytest.mark.slow
def test_paper_recipe_in_miniature_on_vllm(trained, data_file, tmp_path):  # noqa: F811
    run_the_rest(trained, data_file, tmp_path, "vllm")
