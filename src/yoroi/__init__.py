"""Yoroi: defence in depth for Linux servers."""

__version__ = "0.1.0"
