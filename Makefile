# The two commands: `make demo` and `make test`. Each sets up everything it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck bench clean setup

setup: $(STAMP) system-deps

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Rebuilt whenever the packaging or a Cython source changes.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(wildcard fastpath/*.pyx)
	$(PIP) install -q "setuptools>=68" wheel "Cython>=3.0"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	$(PIP) install -q --no-deps "pysparkplug==0.6.1"
	$(PY) -c "import edge_agent.fastpath._codec" || { echo "the Cython fast path did not build" >&2; exit 1; }
	touch $(STAMP)

.PHONY: system-deps
system-deps:
	@scripts/system-deps.sh

demo: setup
	$(PY) -m edge_agent.tools.demo configs/demo.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)  ## mypy strict over the product, tests/, hil_tests/ and bench/
	$(PY) scripts/typecheck.py

# pytest exits 5 when it collected no test: that must fail, never pass silently.
# Two workers; the tests where real time is measured share one of them, one at a time
# (conftest.py). PYTEST_ARGS="-n 0" runs everything in one process.
test: setup lint typecheck
	EDGE_AGENT_REQUIRE_FASTPATH=1 $(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadgroup \
	    $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# codec_bench adds real readings when EDGE_BENCH_CORPUS names a folder of CSV files (see its
# docstring for the series behind the published figures).
bench: setup
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	for b in bench/codec_bench.py bench/fuzz_codec.py bench/fuzz_bundle.py bench/fuzz_batch.py \
	         bench/spool_bench.py bench/fleet_scale.py bench/poll_overhead.py bench/wire_bench.py; do \
	    echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info fastpath/*.c fastpath/*.so
