# Set-up and entry points. `make demo` and `make test` each create .venv and
# install what they need on a fresh machine. torch is pinned in the set-up
# step (a CPU wheel); the package itself accepts torch>=2.4. On a GPU machine
# use e.g. `make test TORCH_SPEC="torch"` to take your platform's default build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo demo-quick test test-fast lint size fetch docs cli-docs notebooks tables clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	touch $@

install: $(VENV)/.installed

fetch: install
	$(BIN)/scalabl fetch

demo: install
	$(BIN)/scalabl demo --output demo_output

demo-quick: install
	$(BIN)/scalabl demo --quick --output demo_output_quick

test: install
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check scalabl_pyro tests benchmarks tools

# The largest modules and functions (tests/test_architecture.py holds them to 500 and 80 lines).
size:
	$(PYTHON) tools/size_report.py

# The documentation site (mkdocs-material + mkdocstrings + mkdocs-jupyter) into site/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Rewrite docs/cli.md from the argument parser (the docs build fails while it is stale).
cli-docs: install
	$(BIN)/python tools/docs_hooks.py

# Re-run the tutorial notebooks in place (quick mode; NOTEBOOK_ARGS="--full 01_quickstart").
notebooks: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/python tools/run_notebooks.py $(NOTEBOOK_ARGS)

# Re-render the results tables of README.md and docs/*.md from benchmarks/results/ (and
# record the commit of a new or changed result file); tests/test_docs_tables.py fails while
# a table differs from its file.
tables: install
	$(BIN)/python tools/render_tables.py

clean:
	rm -rf $(VENV) demo_output demo_output_quick .pytest_cache site
