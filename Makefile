# Every target installs what it needs first, so `make demo` and `make test` work on a fresh
# Debian 12 machine. Stamps under .stamps/ make the set-up steps idempotent and cheap to repeat.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
STAMPS      := .stamps
# Ceph's Python bindings are only built for Debian's own interpreter, so the venv uses it too.
SYSTEM_PY   := /usr/bin/python3
APT_PACKAGES := ceph-mon ceph-osd ceph-mgr ceph-common rbd-mirror python3-rados python3-rbd \
                python3-venv prometheus librados-dev librbd-dev libcephfs-dev \
                docker.io mmdebstrap shellcheck
PYTEST_ARGS ?=
# The controller image `make image` builds (into the project's own dockerd, hack/dockerd.sh).
IMAGE       ?= rbd-mirror-reconciler:dev

.PHONY: help setup lint test test-unit test-alerts test-e2e bench demo clean kube-bins cephcsi-bin \
        tools image lint-workflows

help:
	@echo "make setup      install Debian packages and the virtualenv (idempotent)"
	@echo "make lint       ruff + mypy"
	@echo "make test-unit  fast unit tests (no daemons)"
	@echo "make test-alerts promtool check + unit tests of the Prometheus alert rules"
	@echo "make test-e2e   tests against real Ceph daemons and a real kube-apiserver"
	@echo "                (E2E_KUBECONFIG=PATH: an existing cluster's instead, e.g. kind's)"
	@echo "make kube-bins  build kube-apiserver, kube-controller-manager, etcd once (cached in ~/.cache)"
	@echo "make cephcsi-bin build the real ceph-csi v3.12.2 and CSI gRPC stubs once (cached in ~/.cache)"
	@echo "make tools      build helm and actionlint from Go modules once (cached in ~/.cache)"
	@echo "make image      build the controller image here: own dockerd, Debian base via mmdebstrap"
	@echo "make lint-workflows actionlint (+ shellcheck) on .github/workflows, shellcheck on hack/"
	@echo "make test       all of the above"
	@echo "make bench      benchmarks on real daemons (figures, not pass/fail; BENCH_VOLUMES=...)"
	@echo "make demo       a real failover on a local Ceph pair + API server, then the controller (VOLUMES=N)"

setup: $(STAMPS)/apt $(STAMPS)/venv

# Re-checked when the Makefile (and so the package list) changes; installs only what is missing.
$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@installed=$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -c 'install ok installed'); \
	if [ "$$installed" -ne "$(words $(APT_PACKAGES))" ]; then \
	  echo "apt: installing $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@touch $@

# Order-only on apt: a new Debian package (a restamped apt) does not reinstall the venv.
$(STAMPS)/venv: pyproject.toml | $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@[ -x $(PY) ] || $(SYSTEM_PY) -m venv $(VENV)
	@# Link just the two compiled Ceph modules: --system-site-packages would drag in Debian's
	@# requests & co. and their warnings.
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	for so in /usr/lib/python3/dist-packages/rados.cpython-311-x86_64-linux-gnu.so \
	          /usr/lib/python3/dist-packages/rbd.cpython-311-x86_64-linux-gnu.so; do \
	  ln -sf $$so $$site/; done
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,sandbox]'
	@touch $@

lint: setup
	$(VENV)/bin/ruff check reconciler tests bench
	$(VENV)/bin/ruff format --check reconciler tests bench
	$(VENV)/bin/mypy reconciler tests bench

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The alert rules shipped in config/prometheus/, checked and unit-tested by Debian's promtool.
test-alerts: setup
	promtool check rules config/prometheus/alerts.yaml
	promtool test rules config/prometheus/alerts_test.yaml

# Real kube-apiserver/kube-controller-manager/etcd built from Go modules and cached outside
# the repo by version; a no-op once built, several minutes cold.
kube-bins:
	hack/build-kube.sh

# The real, unmodified ceph-csi from its source tarball (cgo: needs the lib*-dev packages of
# setup) and Python stubs for its CSI gRPC API; cached by tag, a no-op once built.
cephcsi-bin: setup
	hack/build-cephcsi.sh

# helm and actionlint from their Go modules, cached by version outside the repo; a no-op once
# built (cold: about 2 minutes).
tools:
	hack/build-tools.sh

# Starts the project's dockerd if it is not running (and stops it again), bootstraps the Debian
# base once, builds the Dockerfile; prints the image's size and layers.
image: setup
	hack/image.sh $(IMAGE)

# The hosted-CI workflow, never run here: actionlint (shellcheck on its scripts) keeps it valid.
lint-workflows: setup tools
	"$$(hack/build-tools.sh --print-dir)/actionlint" -shellcheck=shellcheck .github/workflows/*.yaml
	shellcheck hack/*.sh

# E2E_KUBECONFIG=PATH points the suite at an existing cluster (kind in hosted CI) instead of the
# local kube-apiserver: no kube binaries are needed then, and tests marked owns_apiserver are
# deselected (pytest lists them). Ceph is always the local pair.
E2E_KUBECONFIG ?=
test-e2e: setup $(if $(E2E_KUBECONFIG),,kube-bins) cephcsi-bin tools image
	$(PY) -m pytest tests/e2e $(if $(E2E_KUBECONFIG),--kubeconfig $(E2E_KUBECONFIG)) $(PYTEST_ARGS)

test: lint lint-workflows test-alerts test-unit test-e2e

# Benchmarks print figures with their baseline from the same run; they are not pass/fail tests.
# bench_failover times ceph-csi's own regenerator against the controller on a failover of each
# BENCH_VOLUMES (about 15 minutes with 10000) and keeps its table in docs/benchmarks.md.
BENCH_VOLUMES ?= 100 1000 10000
bench: setup kube-bins cephcsi-bin
	$(PY) bench/bench_regenerate.py
	$(PY) bench/bench_runtime.py queue
	$(PY) bench/bench_runtime.py informer
	$(PY) bench/bench_resolve.py
	$(PY) bench/bench_failover.py --volumes $(BENCH_VOLUMES) --markdown docs/benchmarks.md

# A larger failover: make demo VOLUMES=300 (the controller then logs its progress).
VOLUMES ?= 3
demo: setup kube-bins
	$(VENV)/bin/rbd-mirror-reconciler sandbox demo --volumes $(VOLUMES)

clean:
	rm -rf $(VENV) $(STAMPS) .mypy_cache .ruff_cache .pytest_cache *.egg-info
