# The two commands of the README: `make book` and `make test`.
# Each creates .venv and installs the project on first use (an idempotent stamp).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= mini
# PROCESSES=K: K processes under accelerate launch share each chapter's images (one per GPU; see the README).
PROCESSES ?= 1
STAMP   := $(VENV)/.stamp-install
LAUNCH  := $(BIN)/accelerate launch --multi_gpu --num_processes $(PROCESSES) --num_machines 1 \
           --mixed_precision no --dynamo_backend no -m memories_lib.cli

.PHONY: book test venv clean benchmarks check-book slides

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(STAMP)

book: $(STAMP)
ifeq ($(PROCESSES),1)
	$(BIN)/memories book --profile $(PROFILE)
else
	$(LAUNCH) book --profile $(PROFILE)
endif

# The reader's checks (headless Chromium) over every page of the book built by `make book`.
check-book: $(STAMP)
	$(BIN)/memories check-book

# The slide deck (slides/deck.md) from the chapters `make book` executed: _build/slides/index.html and, printed
# by headless Chromium, index.pdf beside it.
slides: $(STAMP)
	$(BIN)/memories slides --pdf

test: $(STAMP)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf _build _executed _static/mathjax
