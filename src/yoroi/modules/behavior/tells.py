"""Exploitation tells: what a process does right after a successful exploit, seen at exec time.

A Struts2-style exploit runs commands as the web server with no malware at all; what gives it
away is *who starts what*. :func:`check_exec` looks at a process that just called execve() and
reports, as :class:`Tell` values:

- a server (web, application or database server; :class:`TellRules` ``servers``) or a child of
  one within ``depth`` levels, not past a family boundary, starting a shell
  (``server_shell``), a downloader such as curl, wget, nc or socat (``server_downloader``), or
  an interpreter with inline code (``inline_code``: ``python -c``, ``perl -e``, ``php -r``,
  ``ruby -e``, ``node -e``);
- inline code anywhere (``bash -c`` included) whose text looks like an attack: ``/dev/tcp``,
  ``base64 -d``, ``curl ... | sh``, ``nc -e``, ``pty.spawn``, ``fsockopen`` ...;
- a shell whose stdin or stdout is a socket (``reverse_shell``), unless its parent is sshd;
- a process executing from /tmp, /var/tmp or /dev/shm (``exec_from_tmp``), from a deleted file
  (``deleted_exe``) or from a memfd (``memfd_exec``).

Call it as soon as the proc connector reports the exec: the executable, command line and
descriptors are read from /proc at that moment. A shell that lives a millisecond (``sh -c id``
waits only for ``id``) may be gone by then and then goes unreported, and a shell that points its
own descriptors at a socket after the exec (``exec 0<&3``) is not seen as a reverse shell.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from yoroi.errors import PolicyError
from yoroi.events.enums import Severity
from yoroi.modules.behavior.process_tree import ProcessNode, ProcessTree
from yoroi.modules.behavior.programs import (
    SHELLS,
    Invocation,
    base_name,
    fd_link,
    invocation,
    matches,
    parse_invocation,
    program_names,
    shell_name,
)

DEFAULT_SERVERS: tuple[str, ...] = (
    "nginx", "apache2", "httpd", "lighttpd", "caddy", "php-fpm*", "php-cgi*", "java", "node",
    "nodejs", "gunicorn", "uwsgi", "uvicorn", "hypercorn", "daphne", "flask", "manage.py",
    "app.py", "mysqld", "mariadbd", "postgres", "redis-server", "tomcat*",
)  # fmt: skip
DEFAULT_SHELLS: tuple[str, ...] = tuple(sorted(SHELLS))
DEFAULT_DOWNLOADERS: tuple[str, ...] = (
    "curl", "wget", "nc", "nc.openbsd", "nc.traditional", "netcat", "ncat", "socat", "tftp",
    "ftp", "aria2c", "lwp-download",
)  # fmt: skip
DEFAULT_INTERPRETERS: tuple[str, ...] = (
    "python", "perl", "ruby", "php", "node", "nodejs", "lua", "luajit",
)  # fmt: skip
# node-based tools that run package scripts through sh all day: never "a server"
DEFAULT_NOT_SERVERS: tuple[str, ...] = (
    "npm", "npm-cli.js", "npx", "npx-cli.js", "yarn", "yarn.js", "pnpm", "corepack",
)  # fmt: skip
DEFAULT_EXEC_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")
SUSPICIOUS_CODE: tuple[str, ...] = (
    r"/dev/(?:tcp|udp)/",
    r"\bbase64\s+(?:-\w*d|--decode)\b",
    r"b64decode|frombase64string|base64_decode|\batob\(",
    r"\b(?:curl|wget)\b[^;&]*\|\s*(?:ba|da|z|k)?sh\b",
    r"\b(?:nc|ncat|netcat)\b.*\s-\w*[ec]\b",
    r"\bsocat\b.*\bexec:",
    r"\bmkfifo\b",
    r"\bpty\.spawn\b|\bdup2\(",
    r"\bfsockopen\b|\bTCPSocket\b|IO::Socket|\bnet\.(?:Socket|connect)\b|child_process",
    r"\bsocket\b.*\b(?:subprocess|spawn|popen|connect)\b",
    r"\bchmod\s+\S*\s*/(?:tmp|var/tmp|dev/shm)/",
    r"\beval\b.*\b(?:decode|unhex|gzinflate|str_rot13)\b",
)
_DETAIL_MAX = 200


class TellKind(enum.StrEnum):
    """What was seen; the value is the analytic uid of the finding."""

    SERVER_SHELL = "server_shell"
    SERVER_DOWNLOADER = "server_downloader"
    INLINE_CODE = "inline_code"
    REVERSE_SHELL = "reverse_shell"
    EXEC_FROM_TMP = "exec_from_tmp"
    DELETED_EXE = "deleted_exe"
    MEMFD_EXEC = "memfd_exec"


TITLES = {
    TellKind.SERVER_SHELL: "server started a shell",
    TellKind.SERVER_DOWNLOADER: "server started a downloader",
    TellKind.INLINE_CODE: "interpreter started with inline code",
    TellKind.REVERSE_SHELL: "shell with its input or output on a socket (reverse shell)",
    TellKind.EXEC_FROM_TMP: "program executed from a temporary directory",
    TellKind.DELETED_EXE: "program executed from a deleted file",
    TellKind.MEMFD_EXEC: "program executed from memory (memfd)",
}


@dataclass(frozen=True, slots=True)
class Tell:
    """One exploitation tell about process ``pid``; ``parent`` is its parent's (exe, pid)."""

    kind: TellKind
    pid: int
    exe: str | None
    cmdline: tuple[str, ...]
    parent: tuple[str | None, int] | None
    detail: str
    severity: Severity

    @property
    def title(self) -> str:
        """The finding title ("server started a shell")."""
        return TITLES[self.kind]


@dataclass(frozen=True)
class TellRules:
    """Which programs count as servers, shells, downloaders and interpreters (glob patterns).

    Patterns match a program's names: executable file name with and without version
    ("php-fpm8.2", "php-fpm"), full path, a script's or ``-m`` module's name, and ``comm``.
    """

    servers: tuple[str, ...] = DEFAULT_SERVERS
    shells: tuple[str, ...] = DEFAULT_SHELLS
    downloaders: tuple[str, ...] = DEFAULT_DOWNLOADERS
    interpreters: tuple[str, ...] = DEFAULT_INTERPRETERS
    not_servers: tuple[str, ...] = DEFAULT_NOT_SERVERS
    depth: int = 3
    exec_dirs: tuple[str, ...] = DEFAULT_EXEC_DIRS
    suspicious_code: tuple[str, ...] = SUSPICIOUS_CODE
    socket_parents: tuple[str, ...] = ("sshd", "sshd-session")
    code: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise PolicyError(f"tells: depth {self.depth} must be at least 1 (the parent)")
        for pattern in self.suspicious_code:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PolicyError(f"tells: suspicious_code {pattern!r}: {exc}") from exc
        joined = "|".join(f"(?:{p})" for p in self.suspicious_code) or r"(?!)"
        object.__setattr__(self, "code", re.compile(joined, re.IGNORECASE | re.DOTALL))


@dataclass(frozen=True, slots=True)
class _Exec:
    """What every check looks at: the process, its names, the server above it."""

    node: ProcessNode
    rules: TellRules
    names: frozenset[str]
    how: Invocation | None
    server: ProcessNode | None
    parent: ProcessNode | None
    fd_reader: Callable[[int, int], str | None]

    def tell(self, kind: TellKind, detail: str, severity: Severity) -> Tell:
        info, parent = self.node.info, self.parent
        return Tell(
            kind=kind, pid=info.pid, exe=info.exe, cmdline=info.cmdline,
            parent=(parent.info.exe, parent.pid) if parent else None,
            detail=detail, severity=severity,
        )  # fmt: skip

    def is_shell(self) -> bool:
        return matches(self.names, self.rules.shells) is not None

    def server_label(self) -> str:
        server = self.server
        assert server is not None
        return f"{_label(server)} (pid {server.pid})"


def check_exec(
    tree: ProcessTree,
    pid: int,
    rules: TellRules | None = None,
    fd_reader: Callable[[int, int], str | None] = fd_link,
) -> list[Tell]:
    """The tells of process ``pid``, which just called execve(); [] when none (or gone)."""
    rules = rules if rules is not None else TellRules()
    node = tree.node(pid)
    if node is None or not node.image_known:
        return []
    chain = tree.parent_chain(pid)
    ctx = _Exec(
        node=node, rules=rules, names=program_names(node.info, with_comm=True),
        how=_interpreter_call(node, rules), server=_server_above(tree, chain, rules),
        parent=chain[0] if chain else None, fd_reader=fd_reader,
    )  # fmt: skip
    return [tell for check in _CHECKS if (tell := check(ctx)) is not None]


def _interpreter_call(node: ProcessNode, rules: TellRules) -> Invocation | None:
    how = invocation(node.info)
    if how is not None:
        return how
    name = matches(program_names(node.info), rules.interpreters)
    return parse_invocation(name, node.info.cmdline[1:]) if name else None


def _server_above(
    tree: ProcessTree, chain: Iterable[ProcessNode], rules: TellRules
) -> ProcessNode | None:
    for level, ancestor in enumerate(chain):
        if level >= rules.depth:
            break
        names = program_names(ancestor.info, with_comm=True)
        if matches(names, rules.servers) and not matches(names, rules.not_servers):
            return ancestor
        if tree.is_boundary(ancestor.pid):
            break
    return None


def _label(node: ProcessNode) -> str:
    how = invocation(node.info)
    script = (how.script or how.module) if how else None
    name = base_name(node.info.exe or node.info.comm)
    return f"{name} {base_name(script)}" if script else name


def _snippet(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


def _server_shell(ctx: _Exec) -> Tell | None:
    if ctx.server is None or not ctx.is_shell():
        return None
    code = f": {_snippet(ctx.how.inline)}" if ctx.how and ctx.how.inline else ""
    shell = shell_name(ctx.node.info) or _label(ctx.node)
    detail = f"{ctx.server_label()} started {shell}{code}"
    return ctx.tell(TellKind.SERVER_SHELL, detail, Severity.HIGH)


def _server_downloader(ctx: _Exec) -> Tell | None:
    tool = matches(ctx.names, ctx.rules.downloaders)
    if ctx.server is None or tool is None:
        return None
    detail = f"{ctx.server_label()} started {tool}"
    return ctx.tell(TellKind.SERVER_DOWNLOADER, detail, Severity.HIGH)


def _inline_code(ctx: _Exec) -> Tell | None:
    if ctx.how is None or ctx.how.inline is None:
        return None
    looks_bad = ctx.rules.code.search(ctx.how.inline) is not None
    from_server = ctx.server is not None and not ctx.is_shell()  # shells: server_shell says it
    if not (looks_bad or from_server):
        return None
    why = "attack-like code" if looks_bad else f"started by {ctx.server_label()}"
    detail = f"{ctx.how.family} inline code, {why}: {_snippet(ctx.how.inline)}"
    return ctx.tell(TellKind.INLINE_CODE, detail, Severity.HIGH)


def _reverse_shell(ctx: _Exec) -> Tell | None:
    if not ctx.is_shell():
        return None
    streams = {name: ctx.fd_reader(ctx.node.pid, fd) for fd, name in ((0, "stdin"), (1, "stdout"))}
    sockets = {name: link for name, link in streams.items() if link and link.startswith("socket:")}
    parent = ctx.parent
    if not sockets or (parent and matches(program_names(parent.info), ctx.rules.socket_parents)):
        return None
    detail = ", ".join(f"{name} is {link}" for name, link in sockets.items())
    return ctx.tell(TellKind.REVERSE_SHELL, detail, Severity.CRITICAL)


def _exec_location(ctx: _Exec) -> Tell | None:
    info = ctx.node.info
    exe = info.exe or ""
    if exe.startswith("/memfd:"):
        return ctx.tell(TellKind.MEMFD_EXEC, f"executable is {exe}", Severity.HIGH)
    if info.exe_deleted:
        return ctx.tell(TellKind.DELETED_EXE, f"{exe} was deleted", Severity.HIGH)
    hit = next((d for d in ctx.rules.exec_dirs if exe.startswith(d.rstrip("/") + "/")), None)
    if hit is None:
        return None
    return ctx.tell(TellKind.EXEC_FROM_TMP, f"{exe} is under {hit}", Severity.MEDIUM)


_CHECKS: tuple[Callable[[_Exec], Tell | None], ...] = (
    _server_shell,
    _server_downloader,
    _inline_code,
    _reverse_shell,
    _exec_location,
)
