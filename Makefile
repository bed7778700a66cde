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

# Each profile keeps its own build output, and with it its own notebook execution cache.
ifeq ($(GLOCAL_PROFILE),smoke)
BOOK_OUT := .
else
BOOK_OUT := _build/profiles/$(GLOCAL_PROFILE)
endif

.PHONY: install book test unit notebooks book-strict lab bench data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --path-output $(BOOK_OUT)
	@echo "Book: $(BOOK_OUT)/_build/html/index.html"

test: unit notebooks book-strict

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

notebooks: $(STAMP)
	GLOCAL_PROFILE=smoke $(BIN)/python -m pytest --nbmake --nbmake-timeout=1200 notebooks

book-strict: $(STAMP)
	GLOCAL_PROFILE=smoke $(BIN)/jupyter-book build . -n -W --keep-going

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python -m glocal_core bench

data: $(STAMP)
	$(BIN)/python -m glocal_core data prepare $(NAME) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

clean:
	rm -rf _build .pytest_cache
