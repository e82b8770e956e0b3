# Set-up and everyday commands. `make app` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 7860

.PHONY: setup test app bench clean

setup: $(STAMP)

# torch==2.13.0 is the CPU build on this machine's disk; it is installed first so that nothing
# pulls a multi-GB CUDA build. Re-runs only when pyproject.toml or this file changes.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip uninstall -q -y opencv-python-headless  # replaced by the contrib build; both would share cv2/
	$(PY) -m pip install -q -e ".[app,bench,test,ray]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

app: setup
	$(VENV)/bin/deepprior app --host $(HOST) --port $(PORT)

# The speed benchmark of the fast preset against the paper's (long: see BENCHMARKS.md).
bench: setup
	$(VENV)/bin/deepprior bench speed --out bench-out/speed --resume

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
