# Two commands set everything up on a fresh machine (README, "Set-up"):
#   make run    create .venv, install, run the supervisor on the shipped watch_dir/
#   make test   create .venv, install runtime + dev dependencies, run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A venv with requirements.txt alone (no dev dependency to hide a missing runtime one):
# make test runs one file through each backend from it (tests/smoke_runtime.py).
RUNTIME_VENV ?= .venv-runtime

# System packages the tests drive for real (Debian names). make test installs them with
# apt-get when it runs as root; otherwise the tests that need them say how to get them
# (and under CI=true they fail rather than skip). The network servers (sshd, vsftpd,
# smbd) and their clients are for the "as deployed" tests, which run instances of their
# own on loopback ports, so the install runs with an "exit 101" /usr/sbin/policy-rc.d:
# no package starts its system service (the file is removed afterwards if make created
# it). python3-venv: the deployed daemon's venv is built from Debian's python3, which a
# service user can run (root's own interpreter may be out of its reach).
# rsync: a producer of trees (tests/test_trees.py).
SYSTEM_PACKAGES := prometheus chromium redis-server faketime gzip bzip2 xz-utils zstd \
	openssh-server openssh-client vsftpd samba smbclient curl rsync python3-venv

# The suite runs on this many pytest-xdist workers (most tests wait on a clock, not on a
# core); the "as deployed" tests share one worker (tests/conftest.py), and the tests that
# change something of the whole machine (marked serial) run alone afterwards.
TEST_WORKERS ?= 2

.PHONY: run test lint check bench clean system-deps smoke-runtime docs docs-serve

$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "foldermill needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Rebuilt from scratch when requirements.txt changes: a package dropped from it must go.
$(RUNTIME_VENV)/.stamp: requirements.txt
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

smoke-runtime: $(RUNTIME_VENV)/.stamp system-deps
	$(RUNTIME_VENV)/bin/python tests/smoke_runtime.py

run: $(VENV)/.runtime
	$(PY) supervisor.py -c config.toml

check: $(VENV)/.runtime
	$(PY) supervisor.py -c config.toml check

system-deps:
	@missing=""; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v faketime >/dev/null 2>&1 || missing="$$missing faketime"; \
	for tool in gzip bzip2 zstd; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	command -v xz >/dev/null 2>&1 || missing="$$missing xz-utils"; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v sftp >/dev/null 2>&1 || missing="$$missing openssh-client"; \
	test -x /usr/sbin/vsftpd || missing="$$missing vsftpd"; \
	test -x /usr/sbin/smbd || missing="$$missing samba"; \
	command -v smbclient >/dev/null 2>&1 || missing="$$missing smbclient"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      trap 'rm -f /usr/sbin/policy-rc.d' EXIT; trap 'exit 130' INT TERM; \
	      printf '#!/bin/sh\n# make system-deps: no service starts during the install\nexit 101\n' >/usr/sbin/policy-rc.d; \
	      chmod 755 /usr/sbin/policy-rc.d; \
	    fi; \
	    apt-get -o DPkg::Lock::Timeout=300 update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
	        $$missing; \
	  else \
	    echo "note: missing system packages:$$missing (sudo apt-get install$$missing); their tests will skip"; \
	  fi; \
	fi

test: $(VENV)/.dev system-deps smoke-runtime
	$(PY) -m ruff check .
	$(PY) -m mypy
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial"
	$(PY) -m pytest -m serial || [ $$? = 5 ]  # 5: no test is marked serial

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or
# anchor, or a reference generator that fails (docs/hooks.py), is an error.
docs: $(VENV)/.dev
	$(PY) docs/hooks.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

bench: $(VENV)/.dev
	$(PY) tests/bench/engine.py

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) site .pytest_cache .ruff_cache .mypy_cache .hypothesis build *.egg-info
