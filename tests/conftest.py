"""Suite-wide pytest set-up: shared fixtures live in ``tests/fixtures`` and are registered here."""

pytest_plugins = ["tests.fixtures.mounts"]
