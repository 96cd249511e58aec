"""Intrusion prevention: virtual patching for web applications on the ModSecurity v3 engine
with the OWASP Core Rule Set and Yoroi's own per-CVE virtual patches."""
