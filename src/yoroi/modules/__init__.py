"""Protection modules."""
