"""Fake twins of the ``platform.linux`` adapters, for unit tests of the code above them."""
