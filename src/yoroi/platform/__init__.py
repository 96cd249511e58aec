"""Kernel contact. Only ``platform.linux`` talks to the kernel; ``platform.fakes`` holds twins."""
