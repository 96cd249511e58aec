"""Application control: only approved software runs (allowlisting), with no way around it and
no hung server."""
