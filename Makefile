# Two entry points for a newcomer: `make demo` (the whole workflow) and `make test`.
# Both build .venv from scratch when needed; a re-run only checks the stamp file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Never wait on a model hub or send telemetry: this project runs offline.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade-strategy only-if-needed -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(OFFLINE) PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
