# The two commands a newcomer needs:
#   make demo   set up, then a dry-run send of the example digest to the example list
#   make test   set up everything the tests need (Chromium, Korean fonts, PostgreSQL, Node tools), then run them
# and, while working:
#   make test-fast   the same set-up, then every test not marked slow (about a minute)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATE   ?= 2026-01-23
LIST   ?= daily-papers

.PHONY: demo test test-fast setup test-setup bench clean install

$(BIN)/newsletter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

setup: $(BIN)/newsletter

demo: setup
	$(BIN)/newsletter lists create $(LIST) --description "Top Hugging Face papers of the day" --if-missing
	$(BIN)/newsletter subscribers import subscribers/example.csv --list $(LIST)
	$(BIN)/newsletter publish --date $(DATE)
	$(BIN)/newsletter send --date $(DATE) --list $(LIST) --dry-run --yes

# Production: the package alone (not editable, no test tools, the templates inside it) in a
# virtualenv of its own at PREFIX, which the contrib/ units run; then `newsletter init` in the
# project's folder (README, Deployment). `make install PREFIX=…` puts it elsewhere.
PREFIX ?= /opt/newsletter
install:
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --upgrade pip
	$(PREFIX)/bin/pip install --quiet .
	@echo "installed $(PREFIX)/bin/newsletter; next: newsletter init in the project's folder"

# Debian's Chromium and a Korean font for the browser tests, its PostgreSQL server for
# tests/test_postgresql.py (any version), its SpamAssassin for tests/content/test_spam.py, its nginx for
# tests/test_nginx.py (the README's server block in front of `newsletter serve`); the reference
# MJML compiler and Stoplight Prism from npm (package-lock.json pins them).
test-setup: setup
	@command -v chromium >/dev/null && command -v spamassassin >/dev/null && command -v nginx >/dev/null && fc-list | grep -qi nanum && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum postgresql spamassassin nginx-light >/dev/null; }
	@[ -x node_modules/.bin/prism ] && [ -x node_modules/.bin/mjml ] || npm ci --no-audit --no-fund --loglevel=error

test: test-setup
	$(BIN)/python -m pytest

test-fast: test-setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) node_modules public outbox subscribers/newsletter.db*
