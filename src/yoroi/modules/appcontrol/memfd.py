"""Code run from a memfd: refused through ``vm.memfd_noexec`` and by the exec path.

A memfd is a file with no name on disk (``memfd_create(2)``); droppers write a binary there and
``execveat`` it, so that nothing ever touches a file system an allowlist watches. Two layers:

* :class:`MemfdGuard` sets ``vm.memfd_noexec`` to 2 while enforcing (kernel >= 6.3): memfds are
  created non-executable and sealed that way, and ``MFD_EXEC`` is refused, so ``execve`` of one
  fails with ``EACCES``. The previous value is restored on stop. The tunable belongs to the pid
  namespace of the writer (child namespaces inherit the stricter of their own and the parent's).
* :func:`memfd_decision` judges an exec event whose path is ``/memfd:NAME (deleted)`` -- seen when
  a mark covers the memfd's internal mount -- as :attr:`Reason.MEMFD`: never trusted.
"""

from __future__ import annotations

import logging

from yoroi.errors import PlatformError
from yoroi.modules.appcontrol.types import Decision, Mode, Reason
from yoroi.platform.linux.sysctl import SysctlLike

log = logging.getLogger(__name__)

MEMFD_NOEXEC = "vm.memfd_noexec"
NOEXEC_ENFORCED = "2"  # MFD_NOEXEC_SEAL by default, MFD_EXEC refused
MEMFD_PREFIX = "/memfd:"


def is_memfd_path(path: str | None) -> bool:
    """True for the name the kernel gives a memfd (``/memfd:NAME (deleted)``)."""
    return path is not None and path.startswith(MEMFD_PREFIX)


def memfd_decision(path: str) -> Decision:
    """The verdict on code from a memfd: never trusted (the mode decides deny or report)."""
    return Decision(allow=False, reason=Reason.MEMFD, path=path, rule=MEMFD_NOEXEC)


class MemfdGuard:
    """Sets ``vm.memfd_noexec`` while enforcing and puts the old value back afterwards.

    A kernel without the tunable (< 6.3) or a refused write leaves ``active`` false and
    ``problem`` set: enforcement goes on, with exec events from memfds still denied.
    """

    def __init__(self, sysctl: SysctlLike, mode: Mode) -> None:
        self._sysctl = sysctl
        self._mode = mode
        self._saved: str | None = None
        self.problem: str | None = None

    @property
    def active(self) -> bool:
        """True while this guard holds ``vm.memfd_noexec`` at its enforcing value."""
        return self._saved is not None

    def start(self) -> None:
        """In enforce mode, raise ``vm.memfd_noexec`` to 2 (remembering the old value)."""
        if self._mode is not Mode.ENFORCE or self.active:
            return
        try:
            saved = self._sysctl.read(MEMFD_NOEXEC)
            if saved != NOEXEC_ENFORCED:
                self._sysctl.write(MEMFD_NOEXEC, NOEXEC_ENFORCED)
        except PlatformError as exc:
            self.problem = f"memfd execution not blocked by the kernel: {exc}"
            log.warning("%s", self.problem)
            return
        self._saved = saved

    def stop(self) -> None:
        """Restore the value found at start (nothing if start changed nothing)."""
        saved, self._saved = self._saved, None
        if saved is None or saved == NOEXEC_ENFORCED:
            return
        try:
            self._sysctl.write(MEMFD_NOEXEC, saved)
        except PlatformError as exc:
            self.problem = f"could not restore {MEMFD_NOEXEC}={saved}: {exc}"
            log.error("%s", self.problem)
