"""Helpers shared by the benchmarks: run a command and measure it, print a table, write JSON.

A benchmark runs each tool as a child process and records wall time, CPU time (the child and
every descendant it waited for, from ``wait4``'s rusage) and memory three ways:

- ``peak_rss``: the largest resident set of any single process of the run (``ru_maxrss``);
- ``tree_rss``: the peak of the summed RSS of the whole process tree, sampled every 50 ms
  (pages shared between forked workers are counted once per process, so this overstates);
- ``tree_pss``: the peak of the summed proportional set size (shared pages split between the
  processes sharing them): the honest figure for forked workers sharing copy-on-write memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

SAMPLE_EVERY = 0.05
MB = 1e6


@dataclass
class Measurement:
    """What one run of one command cost."""

    label: str
    argv: list[str]
    exit_code: int
    wall: float
    cpu_user: float
    cpu_system: float
    peak_rss: int  # bytes, largest single process (ru_maxrss)
    tree_rss: int  # bytes, peak of the summed RSS of the process tree (sampled)
    tree_pss: int  # bytes, peak of the summed PSS of the process tree (sampled)
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_system

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        data["stderr"] = self.stderr[-2000:]
        data["cpu"] = self.cpu
        return data


class TreeSampler(threading.Thread):
    """Samples the summed RSS and PSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, every: float = SAMPLE_EVERY) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = 0
        self.peak_pss = 0
        self._done = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            self._sample(root)
            self._done.wait(self.every)

    def _sample(self, root: psutil.Process) -> None:
        rss = pss = 0
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue  # exited between listing and reading: it holds no memory now
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_measured(
    label: str, argv: Sequence[str], *, stdin: IO[bytes] | None = None,
    env: dict[str, str] | None = None,
) -> Measurement:
    """Run ``argv`` to completion, its output captured in temporary files, and measure it."""
    with _spool() as out, _spool() as err:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), stdin=stdin or subprocess.DEVNULL,
                                 stdout=out, stderr=err, env=env)
        sampler = TreeSampler(child.pid)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop()
        child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        out.seek(0)
        err.seek(0)
        return Measurement(
            label, list(argv), child.returncode, wall, usage.ru_utime, usage.ru_stime,
            usage.ru_maxrss * 1024, max(sampler.peak_rss, usage.ru_maxrss * 1024),
            max(sampler.peak_pss, 0), out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def _spool() -> IO[bytes]:
    import tempfile

    return tempfile.TemporaryFile()


def require_tools(names: Sequence[str], install_hint: str) -> None:
    """Exit with a clear message when a tool the benchmark compares against is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}; install them with: {install_hint}")


def tool_version(argv: Sequence[str]) -> str:
    """The first line a ``--version`` style command prints."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) \
        else "unknown"


def warm_cache(paths: Sequence[str], block: int = 1 << 20) -> int:
    """Read every file once so that every tool finds them in the page cache; bytes read."""
    total = 0
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(block):
                    total += len(chunk)
        except OSError:
            continue
    return total


def machine() -> dict[str, Any]:
    """The facts about this host that a figure depends on."""
    uname = os.uname()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "kernel": uname.release,
        "python": sys.version.split()[0],
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                stream: IO[str] = sys.stdout) -> None:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        line = "  ".join(
            value.ljust(widths[i]) if i == 0 else value.rjust(widths[i])
            for i, value in enumerate(row)
        )
        stream.write(line.rstrip() + "\n")
        if index == 0:
            stream.write("  ".join("-" * w for w in widths) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as Markdown, for docs/benchmarks.md."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if value is None:
        return "—"
    return str(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the results (measurements turned into dicts) as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=_encode) + "\n")


def _encode(value: object) -> object:
    if isinstance(value, Measurement):
        return value.to_json()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
