"""OCSF events and the sinks that carry them (JSON lines, stdout, syslog CEF/LEEF)."""
