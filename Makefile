# Two commands a user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench venv clean-venv test-interop bench-peer

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2> $(VENV)/pip.log || { cat $(VENV)/pip.log; exit 1; }
	$(PY) -m pip check
	touch $(STAMP)

# pytest exits 5 when nothing was collected; that must fail CI, and it does (non-zero).
test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py

demo: $(STAMP)
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)

# Optional: transformers' PyTorch GPTSanJapanese as an independent implementation
# (never part of `make test`; needs about 4 GB of wheels).
IVENV  := .venv-interop
IPY    := $(IVENV)/bin/python
ISTAMP := $(IVENV)/.installed

$(ISTAMP): requirements.txt requirements-interop.txt
	test -x $(IPY) || $(PYTHON) -m venv $(IVENV)
	$(IPY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-interop.txt 2> $(IVENV)/pip.log || { cat $(IVENV)/pip.log; exit 1; }
	touch $(ISTAMP)

test-interop: $(ISTAMP)
	$(IPY) -m pytest -q -o addopts="-p no:cacheprovider" tests/interop

bench-peer: $(ISTAMP)
	$(IPY) bench/bench_peer.py
