# MyDSP Assistant — the two commands: `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Rasa 3.6 needs Python 3.10: an installed pyenv 3.10.x, else a python3.10 on the PATH that runs
# (a pyenv shim fails when 3.10 is not the selected version).
PYTHON310 ?= $(shell for p in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r) \
  $$(command -v python3.10 2>/dev/null); do "$$p" -c 'import sys' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
RASA_VENV := .venv-rasa
UV := $(VENV)/bin/uv
RASA := $(RASA_VENV)/bin/rasa
MODEL := models/mydsp.tar.gz
TRAINING_FILES := config.yml $(wildcard domain/*.yml domain/responses/*.yml bot/nlu/*.py) $(shell find data -name '*.yml' 2>/dev/null)
# Headless browser of the web-viewer test (Debian's chromium; apt-get installs it when missing).
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
export RASA_TELEMETRY_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: help setup run serve test model db lint validate clean-state browser speech voice-demo bench prod-deps serve-prod load

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed for $(VENV) (set PYTHON=...)"; exit 1; }
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(VENV)/bin/python -e '.[dev]'
	touch $@

$(RASA_VENV)/.installed: requirements-rasa.txt $(VENV)/.installed
	@[ -n "$(PYTHON310)" ] || { echo "Python 3.10 is needed for Rasa 3.6 (install it with pyenv, or set PYTHON310=...)"; exit 1; }
	[ -x $(RASA_VENV)/bin/python ] || $(PYTHON310) -m venv $(RASA_VENV)
	$(UV) pip install --quiet --python $(RASA_VENV)/bin/python -r requirements-rasa.txt
	touch $@

setup: $(VENV)/.installed $(RASA_VENV)/.installed $(MODEL) db  ## Create what is missing: environments, model, database

$(MODEL): $(RASA_VENV)/.installed $(TRAINING_FILES)
	@log=$${DSP_STATE_DIR:-var}/logs/train.log; mkdir -p $$(dirname $$log); \
	echo "Training the Rasa model (only when data, domain or config changed; log in $$log)..."; \
	start=$$(date +%s); \
	if PYTHONWARNINGS=ignore $(RASA) train --domain domain --data data --config config.yml --out models \
	     --fixed-model-name mydsp > $$log 2>&1; then \
	  echo "Model trained in $$(( $$(date +%s) - start )) s"; \
	else tail -n 40 $$log; echo "Training failed: see $$log"; exit 1; fi

model: $(MODEL)  ## Train the Rasa model if data, domain or config changed

db: $(VENV)/.installed  ## Create the DSP database with demo data (idempotent)
	@$(VENV)/bin/dsp init-db && $(VENV)/bin/dsp seed-demo

run: setup  ## Start everything and chat in the terminal (Ctrl-C stops)
	@$(VENV)/bin/python -m bot.launcher run

serve: setup  ## Start action server, Rasa server and gateway in the foreground
	@$(VENV)/bin/python -m bot.launcher serve

prod-deps:  ## Install Debian's PostgreSQL and Redis servers if they are missing (production layout)
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null; } || { \
	  echo "Installing PostgreSQL and Redis (apt-get) for the production layout..."; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    postgresql redis-server >/dev/null; }

serve-prod: setup prod-deps  ## Production layout: PostgreSQL + Redis, 2 Rasa, 2 action servers, gateway
	@$(VENV)/bin/python -m bot.launcher serve-prod

load: setup prod-deps  ## Load test on the production layout: 200 patients, one Rasa killed mid-run
	$(VENV)/bin/python benchmarks/load.py $(LOAD_ARGS)

validate: $(RASA_VENV)/.installed  ## rasa data validate, failing on any warning
	$(VENV)/bin/python scripts/validate_data.py

bench: setup  ## NLU quality (held-out, 3 pipelines), latency, throughput, memory: table + benchmarks/results/
	$(VENV)/bin/python benchmarks/bench.py $(BENCH_ARGS)

lint: $(VENV)/.installed  ## ruff
	$(VENV)/bin/ruff check .

browser:  ## Install Debian's chromium for the browser tests if it is missing
	@[ -x "$(CHROMIUM)" ] || { echo "Installing chromium (apt-get) for the web-viewer test..."; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

speech:  ## Install Debian's espeak-ng for the voice demo if it is missing
	@command -v espeak-ng >/dev/null || { echo "Installing espeak-ng (apt-get) for the voice demo..."; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }

voice-demo: setup speech  ## A scripted voice call: transcript + the assistant's turns as WAV (var/voice-demo/)
	@$(VENV)/bin/python scripts/voice_demo.py

test: setup validate browser prod-deps  ## Set up what is missing, then run every test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python scripts/gen_form_rules.py --check || { echo "data/rules/forms.yml is stale: run python scripts/gen_form_rules.py"; exit 1; }
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

clean-state:  ## Delete all runtime state (var/): databases, logs, keys
	rm -rf var
