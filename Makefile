# Two commands a fresh machine needs:  `make demo`  and  `make test`.
# torch is installed first, pinned: here that is the local CPU wheel; elsewhere set TORCH (see README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: install demo test lint clean

$(BIN)/smaformer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,export,dicom]"
	touch $@
	@echo "installed: run 'source $(VENV)/bin/activate' to put smaformer on PATH, or call $(BIN)/smaformer"

install: $(BIN)/smaformer

demo: install
	$(BIN)/smaformer demo
	@echo "smaformer is $(BIN)/smaformer (or run 'source $(VENV)/bin/activate')"

# pytest's exit code 5 ("no tests collected") counts as a failure. A UTF-8 locale: torch.compile reads its
# templates with the locale's encoding, so the compile tests need one.
test: install
	@LC_ALL=C.UTF-8 LANG=C.UTF-8 PYTHONUTF8=1 $(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check smaformer tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
