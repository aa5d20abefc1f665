# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthehr-installed
DEMO   := demo-output

.PHONY: install demo test clean

# torch is pinned to the local CPU wheel and pandas < 3 (SDV needs pandas 2) through constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench,app]"
	touch $(STAMP)

install: $(STAMP)

# The demo's model is the Posterior-Matching VAE (about 1.5 min on 2 cores), sampled with every
# physiological equation enforced, then evaluated against the held-out patients.
demo: install
	$(BIN)/synthehr prepare --source mimic-iv --path data/demo/mimic-iv-demo-2.2 \
		--meds data/demo/mimic-iv-demo-meds --out $(DEMO)/prepared
	$(BIN)/synthehr train --model pmvae --data $(DEMO)/prepared --out $(DEMO)/models/pmvae
	$(BIN)/synthehr generate --model $(DEMO)/models/pmvae -n 2000 --seed 0 --enforce all \
		--out $(DEMO)/synthetic/pmvae.parquet
	$(BIN)/synthehr evaluate --synthetic $(DEMO)/synthetic/pmvae.parquet --data $(DEMO)/prepared \
		--out $(DEMO)/evaluation/pmvae
	@echo
	@echo "Report: $(DEMO)/evaluation/pmvae/report.html"
	@echo "Clinician web app on the demo model:"
	@echo "  $(BIN)/synthehr serve --model $(DEMO)/models/pmvae --data $(DEMO)/prepared"
	@echo "  then open http://127.0.0.1:8000/"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
