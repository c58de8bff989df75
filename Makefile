# perditionpy: the commands a developer and CI need. See README.md.
#
#   make test       install what is missing, then run the whole test suite
#   make run        the demo: perditionpy (IMAP4 + POP3) in front of a private Dovecot
#   make lint       ruff
#   make bench      the side-by-side benchmark (bench/README.md; < 10 minutes)
#   make cplugins   the C host shim and example map libraries (cplugins/build/)

# Debian's own python3 when there is one: it is built with profile-guided and
# link-time optimisation, and perditionpy's login path runs about 8% fewer
# instructions on it than on a plain source build such as pyenv's default
# (bench/README.md, "Which Python"). A .venv made from another interpreter is
# kept; `rm -rf .venv` to make it again.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perditionpy-installed
PYTEST_ARGS ?=

.PHONY: test run lint deps venv bench cplugins clean

test: deps venv cplugins
	$(PY) -m pytest tests/ $(PYTEST_ARGS)

run: deps venv
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .

# The Debian packages: one list, in scripts/install-deps.sh (quiet when all present).
deps:
	@scripts/install-deps.sh

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# perditionpy, perdition 2.2, NGINX mail and Dovecot side by side; prints the table
# and writes bench/results/<date>.md. BENCH_ARGS: see `$(PY) bench/run.py --help`.
BENCH_ARGS ?=
bench: deps venv
	$(PY) bench/run.py $(BENCH_ARGS)

# The C host shim and example map libraries (cplugins/build/); plain gcc.
cplugins:
	@cplugins/build.sh

clean:
	rm -rf build dist .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
