# Two commands matter: `make book` (the rendered book) and `make test` (everything works).
# Both bootstrap .venv themselves; it is reinstalled only when pyproject.toml changes.

PYTHON ?= python3
# Inside the conda environment of environment.yml, use it instead: make book VENV=$$CONDA_PREFIX
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= book,test,data
GLOCAL_PROFILE ?= smoke
export GLOCAL_PROFILE
# Experiment results and checkpoints (python -m glocal_core reproduce, and the chapters).
GLOCAL_CACHE_DIR ?= $(CURDIR)/_build/cache
export GLOCAL_CACHE_DIR

# Each profile keeps its own build output, and with it its own notebook execution cache.
ifeq ($(GLOCAL_PROFILE),smoke)
BOOK_OUT := .
else
BOOK_OUT := _build/profiles/$(GLOCAL_PROFILE)
endif

.PHONY: install data-check book test unit experiments notebooks book-strict browser sizes lab bench gpu-check reproduce data clean

install: $(STAMP)

# The smoke profile trains on the real Fashion-MNIST, from the IDX files of Debian's
# dataset-fashion-mnist (or $$GLOCAL_FASHION_MNIST_DIR). Checked first, before any long work:
# installed here when apt-get is available and we are root, otherwise one line says what to do.
FASHION_MNIST_DIR := $(or $(GLOCAL_FASHION_MNIST_DIR),/usr/share/datasets/fashion-mnist)
FASHION_MNIST_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
have_fashion_mnist = for f in $(FASHION_MNIST_FILES); do \
	[ -f "$(FASHION_MNIST_DIR)/$$f.gz" ] || [ -f "$(FASHION_MNIST_DIR)/$$f" ] || exit 1; done

data-check:
	@if ( $(have_fashion_mnist) ); then exit 0; fi; \
	if [ -z "$(GLOCAL_FASHION_MNIST_DIR)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's dataset-fashion-mnist (the real Fashion-MNIST, 30 MB)"; \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; \
	fi; \
	if ! ( $(have_fashion_mnist) ); then \
		echo "error: Fashion-MNIST is not in $(FASHION_MNIST_DIR). Run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files (https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion) in a folder and set GLOCAL_FASHION_MNIST_DIR to it." >&2; \
		exit 1; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The static book has no kernel: widgets render as self-contained HTML (glocal_core.repro.widgets).
# The experiments run first, outside the book build, so that a first build shows which
# experiment and run it is computing, with progress bars on stderr (inside the build the
# notebooks' output is captured); the build then loads every result from the cache.
book: experiments
	GLOCAL_STATIC_WIDGETS=1 $(BIN)/jupyter-book build . --path-output $(BOOK_OUT)
	@echo "Book: $(BOOK_OUT)/_build/html/index.html"

# Each stage timed; the summary is printed at the end, also when a stage fails.
STAGES := unit experiments notebooks book-strict browser
# The experiments on both cores, for make book and make test: the runtime benchmark (table3)
# alone first, so that its timings share the machine with nothing; then SHARDS processes,
# each computing every SHARDS-th run of every experiment and every SHARDS-th setup of the
# trust benchmark into the one cache (shard 0's progress on the terminal, the others' in
# _build/shard-K.log); then one pass that loads everything and prints the tables.
SHARDS ?= 2
DATA_ARG := $(if $(DATA_DIR),--data-dir $(DATA_DIR))
experiments: data-check $(STAMP)
	$(BIN)/python -m glocal_core reproduce table3 $(DATA_ARG)
	@mkdir -p _build; pids=""; \
	for k in $$(seq 1 $$(($(SHARDS) - 1))); do \
		$(BIN)/python -m glocal_core reproduce all --shard $$k/$(SHARDS) $(DATA_ARG) \
			> _build/shard-$$k.log 2>&1 & pids="$$pids $$!"; \
	done; \
	$(BIN)/python -m glocal_core reproduce all --shard 0/$(SHARDS) $(DATA_ARG); status=$$?; \
	for pid in $$pids; do wait $$pid || status=1; done; \
	if [ $$status != 0 ]; then tail -n 40 _build/shard-*.log; exit 1; fi
	$(BIN)/python -m glocal_core reproduce all $(DATA_ARG)

test: data-check $(STAMP)
	@mkdir -p _build; : > _build/test-times.txt; status=0; \
	for stage in $(STAGES); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$stage || status=$$?; \
		echo "$$stage: $$(( $$(date +%s) - start )) s" >> _build/test-times.txt; \
		[ $$status = 0 ] || break; \
	done; \
	echo "make test, seconds per stage:"; cat _build/test-times.txt; exit $$status

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 tests

# Each notebook is executed once per `make test`: nbmake runs a scratch copy of the book's
# sources (EXECUTED) and writes the outputs into it (--overwrite), with the static widgets
# the built book shows; book-strict then renders that copy with the chapters' execution off
# (only the results page, a MyST page that loads cached results, is executed by the build).
# A cell that raises fails nbmake, which names the notebook and cell; the live ipywidgets
# path, which the static build never ran, is covered by tests/test_widgets.py.
# Per-cell timeouts live in each notebook's metadata (see _config.yml); 600 s is the default
# for a notebook without one.
# Not under _build: nbmake collects no notebook whose path has a `_build` part.
EXECUTED := _executed
notebooks: $(STAMP)
	rm -rf $(EXECUTED); mkdir -p $(EXECUTED)
	cp -r book notebooks _static _toc.yml $(EXECUTED)/
	sed 's|^execute:$$|execute:\n  exclude_patterns: ["notebooks/*"]|' _config.yml > $(EXECUTED)/_config.yml
	GLOCAL_PROFILE=smoke GLOCAL_STATIC_WIDGETS=1 $(BIN)/python -m pytest --nbmake \
		--nbmake-timeout=600 --overwrite -p no:cacheprovider $(EXECUTED)/notebooks

book-strict: $(STAMP)
	@test -d $(EXECUTED)/notebooks || { echo "error: run 'make notebooks' first: book-strict renders its outputs" >&2; exit 1; }
	GLOCAL_PROFILE=smoke GLOCAL_STATIC_WIDGETS=1 $(BIN)/jupyter-book build $(EXECUTED) \
		--path-output . -n -W --keep-going

# Every page of the built book loaded in a headless, offline Chromium (apt-get install
# chromium): no request off the machine, no console error, every image shown and readable,
# every formula typeset; and the chapter's static τ/σ/m sliders moved.
browser: $(STAMP)
	GLOCAL_BOOK_DIR=$(CURDIR)/_build/html \
	GLOCAL_BOOK_HTML=$(CURDIR)/_build/html/notebooks/03_glocal_estimation.html \
		$(BIN)/python -m pytest tests/test_built_book.py tests/test_widgets.py -k "built"

# The house's size limits: no notebook code cell over 15 lines, no module over 400 lines
# (also part of `make unit`); lists every offender.
sizes: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_sizes.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python -m glocal_core bench

# On a GPU, at most BUDGET seconds (default 480): device, versions, the bench at T = 1000,
# a dry run of every full experiment, in one JSON report (OUT, default gpu-check.json).
gpu-check: $(STAMP)
	$(BIN)/python -m glocal_core gpu-check --budget $(or $(BUDGET),480) --out $(or $(OUT),gpu-check.json) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# make reproduce NAME=fig2 [GLOCAL_PROFILE=full] [DATA_DIR=...]; NAME=all runs every experiment.
reproduce: $(STAMP)
	$(BIN)/python -m glocal_core reproduce $(NAME) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

data: $(STAMP)
	$(BIN)/python -m glocal_core data prepare $(NAME) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

clean:
	rm -rf _build _executed .pytest_cache
