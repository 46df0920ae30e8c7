# `make run` starts the server on its embedded defaults; `make test` runs the tests.
# Each creates .venv and installs the pinned requirements the first time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test store lint bench bench-realtime clean

$(STAMP): requirements.txt requirements-test.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python run.py

store: $(STAMP)
	$(BIN)/python -m embedded_mongo --dbpath data/db --port 27017

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check embedded_mongo server handlers tests bench run.py settings.py
	$(BIN)/mypy embedded_mongo server handlers run.py settings.py

bench: $(STAMP)
	$(BIN)/python bench/embedded_mongo_bench.py

# The real-time benchmarks (about 15 minutes on 2 cores): bench/README.md.
bench-realtime: $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/fanout_bench.py
	$(BIN)/python bench/held_bench.py
	$(BIN)/python bench/storm_bench.py --baseline
	$(BIN)/python bench/chat_bench.py
	$(BIN)/python bench/storage_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
