# detfm: `make demo` and `make test` each create .venv if missing, install, then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO   := demo_out

.PHONY: install demo test test-all bench clean

# The demo needs only the package (torch CPU, numpy, h5py, numba, plotting); the tests add
# pytest, the PDG cross-check packages, MLflow and scikit-learn (boosted trees) on top.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -c "import torch; print('installed torch', torch.__version__)"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,mlflow,trees]"
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

# The whole chain on 600 simulated events in under 10 minutes on 2 cores: a short
# self-distillation of the point-resolution backbone, fine-tuning on 300 labeled events,
# per-point predictions, event displays and the HTML report.
demo: $(STAMP)
	$(BIN)/detfm simulate --events 600 --seed 1 --workers 2 --out $(DEMO)/events.h5 --overwrite
	$(BIN)/detfm validate $(DEMO)/events.h5
	$(BIN)/detfm info $(DEMO)/events.h5
	$(BIN)/detfm show $(DEMO)/events.h5 --event 0 --color semantic --out $(DEMO)/event0.html
	rm -rf $(DEMO)/pretrain $(DEMO)/finetune
	$(BIN)/detfm pretrain --config configs/demo_pretrain_cpu.yaml --data $(DEMO)/events.h5 --out $(DEMO)/pretrain
	$(BIN)/detfm finetune --config configs/demo_finetune_cpu.yaml --backbone $(DEMO)/pretrain \
		--data $(DEMO)/events.h5 --out $(DEMO)/finetune
	$(BIN)/detfm predict --model $(DEMO)/finetune --data $(DEMO)/events.h5 --out $(DEMO)/preds.h5 --overwrite
	$(BIN)/detfm show $(DEMO)/events.h5 --predictions $(DEMO)/preds.h5 --out $(DEMO)/prediction.png \
		--event $$($(BIN)/python -c "import json; print(json.load(open('$(DEMO)/finetune/split.json'))['test'][0])")
	$(BIN)/detfm report $(DEMO)/pretrain $(DEMO)/finetune --predictions $(DEMO)/preds.h5 --out $(DEMO)/report.html --max-events 20
	@echo "demo outputs in $(DEMO)/: event0.html (event display), pretrain/ and finetune/ (runs),"
	@echo "  preds.h5 (per-point predictions), prediction.png (truth next to prediction of a test event)"
	@echo "report: $(DEMO)/report.html"

test: $(TEST_STAMP)
	bash scripts/install_test_browser.sh
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(TEST_STAMP)
	bash scripts/install_test_browser.sh
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache build *.egg-info src/*.egg-info
