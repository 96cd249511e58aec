"""systemd's service notification protocol (``sd_notify``): readiness, reloads and watchdog.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside systemd the variable
is unset and every call does nothing, so the agent runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket
import time

from yoroi.errors import PlatformError


class Notifier:
    """Sends notifications to systemd when it supervises us; silent otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields (``ready=1`` becomes ``READY=1``); True if sent."""
        if self._address is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(payload, self._address)
            except OSError as exc:
                raise PlatformError(f"sd_notify to {self._address!r} failed: {exc}") from exc
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready=1, status=status)

    def reloading(self) -> bool:
        """Tell systemd a reload began (Type=notify-reload wants the monotonic time too)."""
        return self.notify(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def status(self, text: str) -> bool:
        return self.notify(status=text)


def _address(raw: str) -> str | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    return raw if raw.startswith("/") else None


def _watchdog_seconds(env: dict[str, str] | os._Environ[str]) -> float | None:
    """The watchdog period, if systemd asked for pings and they are meant for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
