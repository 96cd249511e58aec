# Yoroi — `make run` starts the agent on this host, `make test` runs the whole suite.
# Both install what they need first (`make install`, idempotent).

PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# Debian packages the agent and the test suite use (installed only when root).
DEB_PKGS  := nftables iproute2 e2fsprogs util-linux kmod procps openssl \
             libarchive13 clamav-testfiles yara \
             zip zstd xz-utils bzip2 cpio p7zip-full rpm acl \
             modsecurity-crs
PYTEST_ARGS ?=

.PHONY: install deb-packages run test lint typecheck clean

install: deb-packages $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# apt-get update once, then install only what is missing; a non-root user is told what to install.
deb-packages:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "make: not root: skipping Debian packages: $$missing (tests that need them are skipped)"; exit 0; fi; \
	echo "make: installing Debian packages: $$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

run: install
	$(BIN)/yoroi up

test: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
