# Every target sets up what it needs: a .venv with a deliberately pinned CPU torch, then the project.
# Override TORCH_SPEC to choose another torch build (e.g. TORCH_SPEC='torch==2.5.1').
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check clean

# The last pip line installs the test-only oracle of tests/test_efml*.py (ELMoForManyLangs, pure Python) with
# --no-deps, so that it cannot pull another torch; it imports only with overrides<5, which needs typing-utils.
$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "elmoformanylangs==0.0.4.post2" "overrides<5" "typing-utils>=0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elmo-fast demo

# ruff and the import-linter layer contract (pyproject.toml) first: they take seconds and fail fast
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	ELMO_FAST_REQUIRE_ORACLES=1 ELMO_FAST_REQUIRE_NATIVE=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

# One-shot device check of the Triton backend (needs a CUDA GPU; < 8 min): kernel suite compiled, fixture
# parity, 50-step original-preset training vs the reference, gpu_kernels.py; one JSON + markdown report.
GPU_CHECK_OUT ?= gpu-check-report
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
