"""`yoroi integrity` side by side with Debian's `aide` on the same tree, and realtime latency.

Files: both tools record and then check the same tree (``--tree``, /usr) with the same
attributes: SHA-256 and no other hash, file type, permissions, owner and group, size, mtime,
ctime, inode, link count, symlink target, xattrs, POSIX ACLs and file capabilities (Yoroi's
rule for PATHs on the command line records exactly these; AIDE gets a private ``aide.conf`` in
the work directory with ``p+u+g+s+m+c+i+n+l+ftype+sha256+acl+xattrs+caps``). AIDE runs as
Debian ships it (``num_workers`` 1) and with one worker per core; Yoroi with its default jobs
(all cores) and ``--jobs 1``. The page cache is warmed first; every command runs ``--repeat``
times (interleaved) and the run of median wall time is shown. files/s = entries / wall time.

Realtime (root): a tmpfs (or ``--fs ext4``: a loop-mounted sparse image) that the script mounts
itself; a :class:`RealtimeWatcher` runs in this process, a child process makes the changes and
time-stamps each one (``time.time_ns`` in the file's content or name); the watcher's callback
time-stamps each event. *paced*: ``--changes`` writes to existing files at ``--rate`` per second;
*burst*: ``--burst`` new files as fast as the child can make them; every change must be seen.

Goals (issue #6): >= 3x AIDE's files/s for both init and check; realtime p99 <= 50 ms.

    .venv/bin/python benchmarks/integrity_vs_aide.py [--quick] [--json-out FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (a script beside its helpers, not a package)
    MB,
    Measurement,
    machine,
    markdown_table,
    print_table,
    run_measured,
    tool_version,
    warm_cache,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
YOROI = [str(REPO / ".venv" / "bin" / "yoroi")]
AIDE_RULE = "p+u+g+s+m+c+i+n+l+ftype+sha256+acl+xattrs+caps"
AIDE_HINT = "apt-get install -y aide"


# -- files: baseline and check ---------------------------------------------------------------


@dataclass
class Tool:
    """One way to run a baseline and a check: argv makers and how to read the entry count."""

    name: str
    init: list[str]
    check: list[str]
    count: Callable[[Measurement], int | None]
    after_init: Callable[[], None] = lambda: None
    runs: dict[str, list[Measurement]] = field(default_factory=dict)


def aide_conf(work: Path, tree: str, workers: int) -> Path:
    """A private aide.conf: databases in ``work``, one rule with Yoroi's attributes."""
    conf = work / f"aide-{workers}.conf"
    conf.write_text(
        f"database_in=file:{work}/aide-{workers}.db\n"
        f"database_out=file:{work}/aide-{workers}.db.new\n"
        "database_attrs=sha256\n"
        "gzip_dbout=no\n"
        "report_url=stdout\n"
        f"num_workers={workers}\n"
        f"Y = {AIDE_RULE}\n"
        f"{tree}$ Y\n"  # AIDE's lines are regular expressions: not /usr-foo as well
        f"{tree}/ Y\n"
    )
    return conf


def aide_entries(run: Measurement) -> int | None:
    found = re.search(r"number of entries:\s*(\d+)", run.stdout, re.I)  # "Total n..." on changes
    return int(found.group(1)) if found else None


def yoroi_entries(run: Measurement) -> int | None:
    found = re.search(r"(?:recorded|checked) (\d+) files", run.stderr)
    return int(found.group(1)) if found else None


def make_tools(work: Path, tree: str, cores: int) -> list[Tool]:
    tools: list[Tool] = []
    for workers in (1, cores):
        conf = aide_conf(work, tree, workers)

        def promote(w: int = workers) -> None:
            shutil.copyfile(work / f"aide-{w}.db.new", work / f"aide-{w}.db")

        tools.append(Tool(f"aide num_workers={workers}", ["aide", "--init", "-c", str(conf)],
                          ["aide", "--check", "-c", str(conf)], aide_entries, promote))
    for jobs in (None, 1):
        home = work / f"yoroi-home-{jobs or 'default'}"
        flag = [] if jobs is None else ["--jobs", str(jobs)]
        base = [*YOROI, "--home", str(home), "integrity"]
        tools.append(Tool(f"yoroi --jobs {jobs}" if jobs else f"yoroi (default jobs: {cores})",
                          [*base, "baseline", tree, *flag], [*base, "check", "--json", *flag],
                          yoroi_entries))
    return tools


def warm(tree: str) -> tuple[int, int]:
    """Stat every entry and read every regular file once: (entries, bytes read)."""
    files: list[str] = []
    entries = 1
    for top, dirs, names in os.walk(tree):
        entries += len(dirs) + len(names)
        files.extend(os.path.join(top, n) for n in names
                     if not os.path.islink(os.path.join(top, n)))
    return entries, warm_cache(files)


def run_files(tools: list[Tool], repeat: int) -> None:
    for rep in range(repeat):
        for tool in tools:
            for phase in ("init", "check"):
                argv = tool.init if phase == "init" else tool.check
                run = run_measured(f"{tool.name} {phase}", argv)
                tool.runs.setdefault(phase, []).append(run)
                if phase == "init":
                    tool.after_init()
                print(f"  [{rep + 1}/{repeat}] {run.label}: exit {run.exit_code}, "
                      f"{run.wall:.2f} s, {tool.count(run)} entries, load "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
                if run.exit_code not in (0, 1) and phase == "init":
                    sys.exit(f"{run.label} failed:\n{run.stderr[-2000:]}{run.stdout[-2000:]}")


def median_run(runs: list[Measurement]) -> Measurement:
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


def files_rows(tools: list[Tool]) -> tuple[list[list[object]], dict[str, Any]]:
    anchors = {phase: median_run(tools[0].runs[phase]).wall for phase in ("init", "check")}
    anchors_mt = {phase: median_run(tools[1].runs[phase]).wall for phase in ("init", "check")}
    rows: list[list[object]] = []
    summary: dict[str, Any] = {}
    for tool in tools:
        for phase in ("init", "check"):
            run = median_run(tool.runs[phase])
            entries = tool.count(run) or 0
            ratio = None if tool.name.startswith("aide") else \
                f"{anchors[phase] / run.wall:.2f}× / {anchors_mt[phase] / run.wall:.2f}×"
            changes = _changes(tool, run)
            rows.append([f"{tool.name} {phase}", entries, run.exit_code, changes,
                         run.wall, entries / run.wall, run.cpu, run.peak_rss / MB,
                         run.tree_pss / MB, ratio])
            summary[f"{tool.name} {phase}"] = {
                "entries": entries, "median": run, "all_walls": [r.wall for r in tool.runs[phase]],
                "changes_reported": changes,
                "report_head": [r.stdout[:3000] for r in tool.runs[phase] if r.exit_code],
            }
    return rows, summary


def _changes(tool: Tool, run: Measurement) -> int | None:
    if "check" not in run.label:
        return None
    if tool.name.startswith("yoroi"):
        return sum(1 for line in run.stdout.splitlines() if line.strip())
    found = re.search(r"Total number of entries:.*?\n.*?Added entries:\s*(\d+).*?"
                      r"Removed entries:\s*(\d+).*?Changed entries:\s*(\d+)", run.stdout, re.S)
    return sum(int(g) for g in found.groups()) if found else 0


FILES_HEADERS = ["run", "entries", "exit", "changes", "wall s", "files/s", "CPU s",
                 "peak RSS MB", "tree PSS MB", "vs AIDE 1 / N workers"]


# -- realtime latency --------------------------------------------------------------------------

CHILD = r"""
import os, sys, time
mode, directory, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
for i in range(count):
    if rate > 0:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    if mode == "write":
        fd = os.open(f"{directory}/{i:06d}", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, str(time.time_ns()).encode())
    else:
        fd = os.open(f"{directory}/{i:06d}-{time.time_ns()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"x")
    os.close(fd)
"""


@contextmanager
def scratch_fs(kind: str, work: Path) -> Iterator[Path]:
    """A file system of our own (tmpfs, or ext4 on a sparse loop image), always unmounted."""
    mountpoint = work / f"mnt-{kind}"
    mountpoint.mkdir()
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "yoroi-bench", str(mountpoint)],
                       check=True)
    else:
        image = work / "ext4.img"
        with open(image, "wb") as handle:
            handle.truncate(1 << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)  # loop device auto-clears


class Recorder:
    """The watcher's callbacks: a time stamp per change, nothing slow in the reader thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str]] = []
        self.started = threading.Event()
        self.gaps: list[str] = []

    def on_change(self, change: Any) -> None:
        self.seen.append((time.time_ns(), change.path, str(change.kind)))

    def on_gap(self, reason: Any, paths: tuple[str, ...]) -> None:
        self.gaps.append(str(reason))
        self.started.set()

    def settle(self, quiet: float = 2.0, limit: float = 120.0) -> None:
        """Wait until no change arrived for ``quiet`` seconds."""
        deadline, last = time.monotonic() + limit, -1
        while time.monotonic() < deadline and len(self.seen) != last:
            last = len(self.seen)
            time.sleep(quiet)


def make_watcher(directory: Path, recorder: Recorder, who_data: bool) -> Any:
    from yoroi.modules.integrity.realtime import RealtimeWatcher
    from yoroi.modules.integrity.whodata import WhoResolver
    from yoroi.platform.linux.dpkg import DpkgDatabase
    from yoroi.platform.linux.proc_connector import ProcConnector
    from yoroi.platform.linux.process import Processes

    if not who_data:
        return RealtimeWatcher([directory], recorder.on_change, recorder.on_gap)
    who = WhoResolver(Processes(), connector=ProcConnector())
    return RealtimeWatcher([directory], recorder.on_change, recorder.on_gap, who=who,
                           packages=DpkgDatabase)


def run_child(mode: str, directory: Path, count: int, rate: float) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, mode, str(directory), str(count), str(rate)],
                   check=True)
    return time.perf_counter() - started


def latencies(mode: str, directory: Path, count: int, seen: list[tuple[int, str, str]],
              ) -> tuple[list[float], int, int]:
    """Per change, ms from the child's stamp to the first matching event; (ms, missed, extra)."""
    wanted = "modify" if mode == "write" else "create"
    first: dict[str, int] = {}
    for stamp, path, kind in seen:
        if kind == wanted and path not in first:
            first[path] = stamp
    result: list[float] = []
    missed = 0
    for name in sorted(os.listdir(directory)):
        path = str(directory / name)
        made = int((directory / name).read_text()) if mode == "write" \
            else int(name.split("-", 1)[1])
        if path in first:
            result.append((first[path] - made) / 1e6)
        else:
            missed += 1
    expected = count if mode == "write" else len(os.listdir(directory))
    return result, missed + max(0, count - expected), len(first) - len(result)


def realtime_case(root: Path, label: str, mode: str, count: int, rate: float,
                  who_data: bool) -> dict[str, Any]:
    directory = root / label.replace(" ", "-")
    directory.mkdir()
    if mode == "write":
        for i in range(count):
            (directory / f"{i:06d}").write_bytes(b"")
    recorder = Recorder()
    watcher = make_watcher(directory, recorder, who_data)
    with watcher:
        if not recorder.started.wait(10):
            sys.exit("the realtime watcher did not start")
        child_s = run_child(mode, directory, count, rate)
        recorder.settle()
        counters = dict(watcher.counters)
    ms, missed, extra = latencies(mode, directory, count, recorder.seen)
    ms.sort()
    pick = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]) if ms else (lambda q: None)
    print(f"  {label}: {len(ms)} seen, {missed} missed, p50 {pick(0.5)} ms, p99 {pick(0.99)} ms,"
          f" max {ms[-1] if ms else None} ms; child {child_s:.2f} s; {counters}", flush=True)
    return {"label": label, "mode": mode, "changes": count, "rate": rate or None,
            "who_data": who_data, "seen": len(ms), "missed": missed, "unmatched": extra,
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ms[-1] if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None, "child_s": child_s,
            "achieved_rate": count / child_s, "counters": counters, "gaps": recorder.gaps}


def run_realtime(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with scratch_fs(args.fs, work) as root:
        for who_data in (False, True):
            tag = "who-data" if who_data else "bare"
            results.append(realtime_case(root, f"paced {tag}", "write", args.changes,
                                         args.rate, who_data))
            results.append(realtime_case(root, f"burst {tag}", "create", args.burst, 0.0,
                                         who_data))
    return results


REALTIME_HEADERS = ["case", "changes", "rate/s", "seen", "missed", "p50 ms", "p99 ms",
                    "max ms", "goal p99 ≤ 50 ms"]


def realtime_rows(results: list[dict[str, Any]]) -> list[list[object]]:
    return [[r["label"], r["changes"], r["achieved_rate"], r["seen"], r["missed"], r["p50_ms"],
             r["p99_ms"], r["max_ms"],
             ("yes" if r["p99_ms"] is not None and r["p99_ms"] <= 50 else "no")
             if r["mode"] == "write" else ("none missed" if not r["missed"] else "MISSED")]
            for r in results]


# -- main --------------------------------------------------------------------------------------


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="/usr")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changes", type=int, default=2000, help="paced writes")
    parser.add_argument("--rate", type=float, default=200.0, help="paced writes per second")
    parser.add_argument("--burst", type=int, default=10000, help="new files, full speed")
    parser.add_argument("--fs", choices=["tmpfs", "ext4"], default="tmpfs")
    parser.add_argument("--quick", action="store_true",
                        help="/usr/share/doc, 1 repetition, 500 paced and 2,000 burst changes")
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--skip-realtime", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    args = parser.parse_args()
    if args.quick:
        args.tree, args.repeat, args.changes, args.burst = "/usr/share/doc", 1, 500, 2000
    return args


def main() -> None:
    args = parse()
    if shutil.which("aide") is None and not args.skip_files:
        sys.exit(f"aide is missing: install Debian's AIDE with `{AIDE_HINT}`")
    if os.geteuid() != 0:
        sys.exit("run as root: AIDE and Yoroi must read every file, and the realtime part "
                 "mounts a file system and uses fanotify")
    cores = os.cpu_count() or 1
    data: dict[str, Any] = {"machine": machine(), "args": vars(args), "versions": {
        "aide": tool_version(["aide", "--version"]), "yoroi": tool_version([*YOROI, "--version"]),
    }}
    print(f"machine: {data['machine']}\nversions: {data['versions']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="yoroi-bench-integrity-") as tmp:
        work = Path(tmp)
        if not args.skip_files:
            entries, warmed = warm(args.tree)
            print(f"warmed {args.tree}: {entries} entries (os.walk), {warmed / MB:.0f} MB read",
                  flush=True)
            tools = make_tools(work, args.tree, cores)
            data["commands"] = {t.name: {"init": t.init, "check": t.check} for t in tools}
            data["aide_conf"] = aide_conf(work, args.tree, 1).read_text()
            run_files(tools, args.repeat)
            rows, data["files"] = files_rows(tools)
            data["files"]["walk_entries"] = entries
            print_table(FILES_HEADERS, rows)
            if args.markdown:
                print(markdown_table(FILES_HEADERS, rows))
        if not args.skip_realtime:
            data["realtime"] = run_realtime(args, work)
            rows = realtime_rows(data["realtime"])
            print_table(REALTIME_HEADERS, rows)
            if args.markdown:
                print(markdown_table(REALTIME_HEADERS, rows))
    data["load_after"] = os.getloadavg()
    if args.json_out:
        write_json(args.json_out, data)


if __name__ == "__main__":
    main()
