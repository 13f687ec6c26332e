# The two commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench clean

install: $(STAMP)

# The stamp depends on the requirement files, so editing a pin reinstalls.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

run: install
	$(PY) -m bot demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bot bench scoring

clean:
	rm -rf $(VENV) .venv-bench .venv-lifetimes var/demo
