# fastairl: `make demo` and `make test` work on a fresh machine; both build .venv first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
PYTEST_ARGS ?=

.PHONY: venv demo test apt clean-venv

venv: $(STAMP)

# ffcv 1.0.2 builds from source against OpenCV and libjpeg-turbo: install their
# headers when missing (as root through apt-get; otherwise say what to run).
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "[make] installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "[make] missing system packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; fi; \
	fi

$(STAMP): requirements.txt pyproject.toml | apt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: venv
	$(VPY) data_prep/demo.py

test: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

clean-venv:
	rm -rf $(VENV)
