# detfm: `make demo` and `make test` each create .venv if missing, install, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo_out

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -c "import torch; print('installed torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/detfm simulate --events 200 --seed 1 --workers 2 --out $(DEMO)/events.h5 --overwrite
	$(BIN)/detfm validate $(DEMO)/events.h5
	$(BIN)/detfm info $(DEMO)/events.h5
	$(BIN)/detfm show $(DEMO)/events.h5 --event 0 --color semantic --out $(DEMO)/event0.html
	$(BIN)/detfm show $(DEMO)/events.h5 --event 0 --color semantic --out $(DEMO)/event0.png
	rm -rf $(DEMO)/pretrain
	$(BIN)/detfm pretrain --config configs/pretrain_micro_cpu.yaml --data $(DEMO)/events.h5 \
		--steps 30 --batch-size 8 --out $(DEMO)/pretrain
	@echo "demo outputs in $(DEMO)/ (open $(DEMO)/event0.html in a browser; the run is in $(DEMO)/pretrain)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache build *.egg-info src/*.egg-info
