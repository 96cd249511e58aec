"""Integrity monitoring: every change to files and system configuration — what, when, and who."""
