# Entry points: make run | test | lint | bench. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

.PHONY: superuser run test test-fast test-faults lint format bench bench-quick bench-full stack system-deps check-deploy clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# The embedded default: SQLite + in-memory channel layer, demo assistant unless
# OPENAI_API_KEY or OPENAI_BASE_URL is set. Open http://127.0.0.1:8000/
run: $(STAMP)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py createroom demo --name "Demo room"
	@echo ""
	@echo "  Chatsite is listening on http://127.0.0.1:$${PORT:-8000}/  (Ctrl-C stops it)"
	@echo "  Sign up there, open the demo room and type: @assistant hello"
	@echo ""
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) -m daphne -b 127.0.0.1 -p $${PORT:-8000} chatsite.asgi:application

# An admin account for /admin/ on the `make run` database.
superuser: $(STAMP)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(PY) manage.py createsuperuser

# Browsers and nginx for the browser and multi-process tests (Debian packages
# here, since browser downloads are blocked; playwright's own elsewhere).
system-deps:
	@bash scripts/ensure-system-deps.sh

test: $(STAMP) system-deps
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not browser and not system and not faults"

test-faults: $(STAMP) system-deps
	$(PY) -m pytest -m faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check-deploy: $(STAMP)
	DJANGO_DEBUG=0 DJANGO_SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
	  DJANGO_ALLOWED_HOSTS=chat.example.com $(PY) manage.py check --deploy --fail-level WARNING

# The headline rows (about 20-30 minutes): S1 at 1000 members, S2, S3 at 1k, S5, S6 (bench/README.md).
bench: $(STAMP)
	$(VENV)/bin/pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.run

# Everything: every row and size, S4 10-minute soaks, S7 (a few hours).
bench-full: $(STAMP)
	$(VENV)/bin/pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.run --full

bench-quick: $(STAMP)
	$(VENV)/bin/pip install --quiet -r requirements-bench.txt
	$(PY) -m bench.run --quick

# The multi-process topology without Docker: nginx + 2 uvicorn processes (deploy/entrypoint.sh) + Redis.
stack: $(STAMP) system-deps
	$(PY) -m deploy.localstack

clean:
	rm -rf $(VENV) staticfiles test-results .pytest_cache .ruff_cache
