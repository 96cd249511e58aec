"""``python -m yoroi`` is the ``yoroi`` command."""

from yoroi.cli import main

main()
