# Two commands set everything up on a fresh machine with Python 3.11, pip, make and gcc:
#   make run   - create .venv if missing, install, run the simulation suite in both conflict
#                modes and print a verdict per mode
#   make test  - create .venv if missing, install .[test], run ruff, mypy --strict, pytest
#                (then the speedups' tests again on the pure-Python path)
#   make fuzz  - install .[fuzz] (atheris) too, fuzz every target FUZZ_SECONDS (fuzz/README.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?=

# An installed venv is refreshed when the build inputs change, so the compiled speedups are
# rebuilt from their source (a stale extension would test old code).
SPEEDUPS := setup.py $(wildcard crdt_kv/_speedups_c/*.c crdt_kv/_speedups_c/*.h)

.PHONY: run test lint typecheck pytest pytest-pure bench soak chaos fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(SPEEDUPS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(SPEEDUPS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-fuzz: pyproject.toml $(SPEEDUPS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench,fuzz]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

# The suite in both conflict modes, one verdict line each; fails if either fails. Siblings
# mode runs 32 replicas too, at 5,000 operations: its states carry every concurrent version,
# so it costs about 20x more per operation, and at this size it takes about as long as lww.
run: $(VENV)/.installed
	@status=0; \
	$(BIN)/crdt-kv simulate --nodes 32 --ops 100000 || status=1; \
	$(BIN)/crdt-kv simulate --conflicts siblings --nodes 32 --ops 5000 || status=1; \
	exit $$status

lint: $(VENV)/.installed-test
	$(BIN)/ruff check crdt_kv tests bench fuzz

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict crdt_kv

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest

# The pure-Python twin of the compiled speedups (crdt_kv/accel.py), on the tests that
# exercise it: the full run above takes the compiled path when the extension is built.
PURE_TESTS ?= tests/test_accel.py tests/test_fingerprint.py tests/test_store.py \
	tests/test_layout_reads.py tests/test_store_points.py tests/test_store_reads.py \
	tests/test_store_gc.py tests/test_store_scrub.py tests/test_crash.py tests/test_repair.py \
	tests/test_protocol_batch_decoding.py tests/test_backends.py tests/test_backends_rocksdb_family.py
pytest-pure: $(VENV)/.installed-test
	CRDT_KV_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(PURE_TESTS)

test: lint typecheck pytest pytest-pure

# Issue 13's sweep: `crdt-kv simulate --seeds 1250` over every scenario (12 today, so 15,000
# seeded schedules; 10,000 at the issue's 8) at 6 nodes x 1,000 operations, one summary row
# per scenario; then the wall time, also scaled to 10,000 schedules (target: under 300 s on
# 2 cores); then the soak-marked tests.
SOAK_SEEDS ?= 1250
soak: $(VENV)/.installed-test
	@scenarios=$$($(BIN)/python -c 'from crdt_kv.sim.scenarios import scenario_names as s; print(len(s()))'); \
	runs=$$(( scenarios * $(SOAK_SEEDS) )); \
	start=$$(date +%s); \
	$(BIN)/crdt-kv simulate --nodes 6 --ops 1000 --seeds $(SOAK_SEEDS) --summary; status=$$?; \
	wall=$$(( $$(date +%s) - start )); \
	echo "soak sweep: $$runs schedules ($$scenarios scenarios x $(SOAK_SEEDS) seeds) in $$wall s wall;" \
		"$$(( wall * 10000 / runs )) s per 10,000 (target < 300 s); load $$(cut -d' ' -f1 /proc/loadavg)"; \
	exit $$status
	$(BIN)/python -m pytest -m soak

# Multi-process chaos (crdt_kv/testing/chaos): 5 crdt-kv serve nodes talking only through a
# fault-injecting proxy (delays, one-way and full partitions, stalls, drops, resets), a
# SIGKILL every 2 s on average (100+ per 300 s run), writers logging every acknowledged
# write, and an independent checker of the end state. Prints the report; fails on FAIL.
# A 15 s, 3-node version runs in `make test` (tests/test_chaos.py).
CHAOS_SECONDS ?= 300
CHAOS_SEED ?= 1
chaos: $(VENV)/.installed-test
	CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) $(BIN)/python -m pytest -m soak tests/test_chaos.py -s -q

# Coverage-guided fuzzing with atheris: each target of crdt_kv/testing/fuzz_targets.py (or
# those in FUZZ_TARGETS) for FUZZ_SECONDS, one after the other, printing executions and
# coverage; a crash is saved in fuzz/crashes/ and fails the run. `make test` runs a short
# smoke of the same targets without atheris.
fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_local.py
	$(BIN)/python bench/bench_sync.py
	$(BIN)/python bench/bench_sim.py
	$(BIN)/python bench/bench_fingerprints.py
	$(BIN)/python bench/bench_repair.py
	$(BIN)/python bench/bench_first_contact.py
	$(BIN)/python bench/bench_hostile.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis crdt_kv/_speedups*.so
