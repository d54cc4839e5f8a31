# Quick start:  make run   (the gateway on :8767)   |   make test   (the whole suite)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test demo clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

## Start the gateway under gunicorn with the shipped gunicorn.conf.py.
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## Run every test: unit, integration (fake upstream on loopback), end-to-end (real gunicorn).
test: $(STAMP)
	$(BIN)/python -m pytest

## The gateway in front of the project's own fake OpenAI-compatible upstream (no LLM needed).
## MASTER_API_KEY is the original README's example value: development only.
demo: $(STAMP)
	$(BIN)/python -m tests.fakes.upstream --host 127.0.0.1 --port 8768 --gap 0.2 & \
	trap 'kill $$!' EXIT INT TERM; \
	AI_API_URL=http://127.0.0.1:8768/v1/completions MASTER_API_KEY=your-master-key \
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

clean:
	rm -rf $(VENV)
