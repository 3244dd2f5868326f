# One-command entry points. Each bootstraps .venv (and, for the tests, the local Kafka, Redis and
# S3 servers) on a fresh Debian machine, then does its job.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
SW := $(VENV)/bin/signwatch

.PHONY: demo test test-unit stack-up stack-down install lock clean test-tools wrk bench-serving

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	# the monitor benchmark's CUSUM peer (BSD): every release pins numpy < 2.2 and scipy < 1.15,
	# which ours exceed, so it goes in without its pins; it runs on ours (benchmarks/monitor.py)
	$(VENV)/bin/pip install --quiet --no-deps -c constraints.txt frouros
	touch $@

demo: $(STAMP)
	$(SW) demo

# The stack is stopped even when tests fail; the exit status is pytest's.
test: $(STAMP) test-tools
	$(SW) stack up
	status=0; $(VENV)/bin/python -m pytest tests -ra --durations=15 || status=$$?; \
	$(SW) stack down; exit $$status

# prometheus, chromium, chromedriver (apt) and kustomize (go install) for the deploy,
# dashboard and Prometheus tests; .ci/run runs it too.
test-tools:
	bash deploy/install-test-tools.sh

test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m "not stack"

stack-up: $(STAMP)
	$(SW) stack up

stack-down: $(STAMP)
	$(SW) stack down

# Refresh the lock after changing dependency ranges in pyproject.toml.
lock: $(STAMP)
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^signwatch' > constraints.txt

# The serving benchmark's load generator: Debian's wrk (compiled, so the client takes little CPU).
wrk:
	command -v wrk >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends wrk; }

bench-serving: $(STAMP) wrk
	$(VENV)/bin/python benchmarks/serving.py

clean:
	rm -rf signwatch-demo signwatch-data .pytest_cache
