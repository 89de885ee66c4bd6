# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint coverage proto bench chaos memcheck clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/meshkit demo $(DEMO_ARGS)

# Real components the suite runs, from Debian (each a no-op when installed): Prometheus and
# Alertmanager (tests/ops), etcd-server/etcd-client (the etcd registry tests), chromium
# (the admin dashboard's browser test); @grpc/grpc-js from npm, pinned, into .cache/grpcjs
# (tests/interop).
# Test workers: one more than the CPUs this process may use, as the suite waits on
# sockets, subprocesses and timers part of its time. 2 cores (2026-12-06, an EPYC, the
# suite's per-test times summing to 1,023 s): 3 workers 6:22 of tests, 512 s of CPU
# (1.3 cores busy); 4 workers 5:48, 543 s of CPU (1.55 cores). The session before, 5
# workers saved 23 s over 3 and a fault scenario that judges throughput against its own
# pre-fault rate (tests/faults/test_quick.py, huge-deadline) read the load as no recovery
# once: 34 s is not worth a load-sensitive CI failure. Later the same day, with more of
# the suite's waiting cut: 3 workers 5:08 / 5:20 of tests in a clean clone's CI run.
# TEST_WORKERS=N to choose.
# --max-worker-restart=0: a test worker that dies (a segfault, a SIGKILL) fails the run at
# once and names the test it died on. pytest-xdist 3.8 with --dist loadfile can otherwise
# replace the worker and then wait for good with every worker idle (pytest-xdist #784,
# #1378); a clean-clone CI run hung so once (tests/test_suite_worker_crash.py).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1); print(n + 1)")
test: $(STAMP)
	bash scripts/install-ops.sh
	bash scripts/install-etcd.sh
	bash scripts/install-browser.sh
	bash scripts/install-grpcjs.sh
	$(VENV)/bin/ruff check meshkit examples tests $(wildcard benchmarks)
	$(VENV)/bin/mypy
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 $(PYTEST_ARGS)

# Line coverage of meshkit/ over the whole suite (the call objects, meshkit/_calls.py, >= 95 %).
coverage: $(STAMP)
	$(PY) -m coverage run -m pytest $(PYTEST_ARGS)
	$(PY) -m coverage report --skip-covered

lint: $(STAMP)
	$(VENV)/bin/ruff check meshkit examples tests $(wildcard benchmarks)
	$(VENV)/bin/mypy

bench: $(STAMP)
	bash scripts/install-etcd.sh
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks --plot $(BENCH_ARGS)

# Every fault scenario of issue 12 at full length on real processes (a few minutes);
# `make test` runs the quick subset (tests/faults/test_quick.py). CHAOS_ARGS="--scenarios a,b".
chaos: $(STAMP)
	$(PY) -m tests.faults --long $(CHAOS_ARGS)

# The server shutdown's use-after-free check under valgrind memcheck (grpc.aio's freed
# request states, tests/test_hunt40_server_cancel_all_recipe.py; about 4 minutes of one
# core, so not in `make test`). Needs valgrind (apt-get install valgrind).
memcheck: $(STAMP)
	MESHKIT_MEMCHECK=1 $(PY) -m pytest -n 0 -p no:randomly -k memcheck tests/test_hunt40_server_cancel_all_recipe.py $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m examples.ecom.proto.generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
