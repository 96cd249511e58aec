"""Behaviour monitoring: unknown malware shows itself by what it does.

Ransomware is scored per process family from its file activity, frozen and killed mid-run, and
every file it damaged is put back; the tell-tale behaviour after an exploit (a web server
starting a shell) is reported.
"""
