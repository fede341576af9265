# opd: `make demo` distils a tiny student from a tiny teacher service on this CPU;
# `make test` runs every test layer. Both set up everything they need (virtual environment, packages,
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

.PHONY: install protos browser test demo demo-teacher bench lint format clean

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

# Debian's Chromium and Playwright for the browser test (never a Playwright download).
browser: install
	VENV=$(VENV) bash scripts/install-browser.sh

test: install browser
	$(PY) -m pytest

# The distillation demo: demo models (cached), the teacher service, OPD, accuracy, plots.
demo: install
	$(PY) -m opd_client.train.demo

# The teacher alone on the tiny model: what it thinks of one text.
demo-teacher: install
	$(PY) -m opd_teacher.demo

# Each script prints a table and JSON; BENCH_OUT collects the JSON reports.
BENCH_OUT := .cache/bench
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/teacher.py --json-out $(BENCH_OUT)/teacher.json
	bash benchmarks/setup_bench_env.sh
	$(PY) benchmarks/losses.py --json $(BENCH_OUT)/losses.json
	$(PY) benchmarks/gateway.py --json-out $(BENCH_OUT)/gateway.json
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
