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

.PHONY: install book test unit notebooks book-strict browser lab bench reproduce data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The static book has no kernel: widgets render as self-contained HTML (glocal_core.widgets).
book: $(STAMP)
	GLOCAL_STATIC_WIDGETS=1 $(BIN)/jupyter-book build . --path-output $(BOOK_OUT)
	@echo "Book: $(BOOK_OUT)/_build/html/index.html"

test: unit notebooks book-strict browser

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

notebooks: $(STAMP)
	GLOCAL_PROFILE=smoke $(BIN)/python -m pytest --nbmake --nbmake-timeout=3600 notebooks

book-strict: $(STAMP)
	GLOCAL_PROFILE=smoke GLOCAL_STATIC_WIDGETS=1 $(BIN)/jupyter-book build . -n -W --keep-going

# The built chapter's static τ/σ/m sliders, moved in a headless Chromium (apt-get install chromium).
browser: $(STAMP)
	GLOCAL_BOOK_HTML=$(CURDIR)/_build/html/notebooks/03_glocal_estimation.html \
		$(BIN)/python -m pytest tests/test_widgets.py -k built_chapter

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python -m glocal_core bench

# make reproduce NAME=fig2 [GLOCAL_PROFILE=full] [DATA_DIR=...]; NAME=all runs every experiment.
reproduce: $(STAMP)
	$(BIN)/python -m glocal_core reproduce $(NAME) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

data: $(STAMP)
	$(BIN)/python -m glocal_core data prepare $(NAME) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

clean:
	rm -rf _build .pytest_cache
