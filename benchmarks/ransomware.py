"""Behaviour monitoring against the ransomware simulator, and its I/O overhead on honest work.

Everything happens on a sparse ext4 image this script loop-mounts itself (root needed), so that
the pre-content backups work as on a real server disk.

1. Ransomware: for each simulator variant, ``--runs`` times: a fresh directory of ``--files``
   documents, the agent started in this process with behaviour watching the mount, a copy of the
   simulator (kept outside the mount: the module quarantines it) run at full speed, the finding
   awaited, the agent stopped. Measured: files *touched* (originals whose name or content
   differed while the family was frozen: hashed from a bus subscriber on the responder's
   ``StopProcessTree`` event, which runs on the event loop before the kill and the restore can
   start), files *lost* after the restore (an original missing or different, or a file the
   simulator created left behind), the finding's own ``restored``/``lost`` counts, and the time
   from the simulator's start to the freeze.
2. Overhead: an honest workload (write N files, read them back, rewrite half, ``tar czf`` the
   tree, a sqlite insert loop), each phase a separate process, timed inside the process; without
   the agent, with it, and with it but the workload trusted (no backups, no scoring), alternated,
   ``--reps`` times; medians.

Goals (issue #4): median <= 3 files touched and 0 lost after restore in every variant; <= 5 %
I/O overhead. Anchors (published): CryptoDrop lost a median of 10 files; ShieldFS restored 100 %.

    .venv/bin/python benchmarks/ransomware.py [--quick] [--runs N] [--json-out FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SIMULATOR = HERE.parents[1] / "tests" / "modules" / "behavior" / "simulator.py"
PHASES = ("write", "read", "rewrite", "tar", "sqlite")
WORDS = "invoice report customer order shipment budget meeting contract server backup".split()


# -- the honest workload (run as `ransomware.py _workload PHASE DIR FILES SIZE`) ---------------

def workload(phase: str, tree: Path, files: int, size: int) -> float:
    """One phase of the honest workload on ``tree``; seconds it took."""
    started = time.perf_counter()
    names = [tree / f"d{i % 20:02d}" / f"f{i:05d}.txt" for i in range(files)]
    if phase == "write":
        rng = random.Random(1)
        for path in names:
            path.parent.mkdir(exist_ok=True)
            text = " ".join(rng.choice(WORDS) for _ in range(size // 6)).encode()
            path.write_bytes(text[:size])
    elif phase == "read":
        for path in names:
            path.read_bytes()
    elif phase == "rewrite":  # a new process: its first write to each file is a backup
        for path in names[::2]:
            path.write_bytes(path.read_bytes().upper())
    elif phase == "tar":
        subprocess.run(["tar", "czf", str(tree.with_suffix(".tgz")), "-C", str(tree), "."],
                       check=True)
    elif phase == "sqlite":
        _sqlite(tree / "app.db", files)
    return time.perf_counter() - started


def _sqlite(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("create table t (id integer primary key, body blob)")
    for _ in range(rows // 10):  # a commit (journal + fsync) per 10 rows
        with db:
            db.executemany("insert into t (body) values (?)",
                           [(os.urandom(512) + b"x" * 512,) for _ in range(10)])
    db.close()


if len(sys.argv) > 1 and sys.argv[1] == "_workload":  # the child: no agent imports
    print(workload(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    sys.exit(0)

# The parent: the agent and the measuring helpers.
import asyncio  # noqa: E402

sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]
from _common import machine, markdown_table, print_table, write_json  # noqa: E402
from tests.fixtures.mounts import MountUnavailable, mounted_ext4  # noqa: E402

from yoroi.agent.daemon import Agent  # noqa: E402
from yoroi.events.model import DetectionFinding, Event, ProcessRemediationActivity  # noqa: E402
from yoroi.home import Home  # noqa: E402
from yoroi.modules import module_classes, policy_sections  # noqa: E402

VARIANTS = ("inplace", "newdelete", "rename", "intermittent", "slow", "multiprocess", "base64")
RULE = "yoroi.behavior.ransomware"
MARKER = ".yoroi-simulator"


def hashes(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def differences(before: dict[str, str], now: dict[str, str]) -> tuple[list[str], list[str]]:
    """(originals missing or changed, files that were not there before).

    Both are taken from what the run is about: the simulator's marker file is neither.
    """
    before = {p: d for p, d in before.items() if not p.endswith(MARKER)}
    harmed = [p for p, digest in before.items() if now.get(p) != digest]
    return harmed, sorted(p for p in set(now) - set(before) if not p.endswith(MARKER))


# -- the agent in this process ------------------------------------------------------------------

class Session:
    """One agent with behaviour watching ``watch``, and what its bus carried."""

    def __init__(self, home: Path, watch: Path, trusted: tuple[str, ...] = ()) -> None:
        extra = f"  trusted: {list(trusted)!r}\n" if trusted else ""
        policy = ("agent: {status_interval: 0}\nbehavior:\n  enabled: true\n"
                  f"  watch: [\"{watch}\"]\n  response: kill\n" + extra)
        classes = module_classes()
        self.agent = Agent(Home.resolve(home), classes, policy_sections(classes),
                           policy_text=policy, say=lambda _: None)
        self.seen: list[Event] = []
        self.agent.bus.subscribe(self.seen.append, (), "benchmark")
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> Session:
        self.task = asyncio.create_task(self.agent.run())
        await until(self._watching, 30)
        return self

    def _watching(self) -> bool:
        runner = self.agent.runners.get("behavior")
        return runner is not None and runner.status().detail.startswith("watching")

    async def __aexit__(self, *exc: object) -> None:
        self.agent.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)

    def findings(self) -> list[DetectionFinding]:
        return [e for e in self.seen if isinstance(e, DetectionFinding)
                and e.finding_info.analytic is not None and e.finding_info.analytic.uid == RULE]

    def counters(self) -> dict[str, Any]:
        runner = self.agent.runners.get("behavior")
        return dict(runner.status().counters) if runner is not None else {}


async def until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class FreezeProbe:
    """Hashes the victims when the responder reports the family frozen.

    The bus calls subscribers synchronously on the event loop, inside ``Responder.request``;
    the module's kill and restore are scheduled on that loop after the freeze returns, so
    nothing can change the files while this runs (the family is stopped, the undo not begun).
    """

    def __init__(self, victims: Path) -> None:
        self.victims = victims
        self.at: float | None = None
        self.snapshot: dict[str, str] | None = None

    def __call__(self, event: Event) -> None:
        if self.snapshot is None and isinstance(event, ProcessRemediationActivity) \
                and event.message.startswith("StopProcessTree done"):
            self.at = time.monotonic()
            self.snapshot = hashes(self.victims)


# -- 1. ransomware -------------------------------------------------------------------------------

def prepare(mount: Path, files: int, size: int, seed: int) -> Path:
    out = subprocess.run([sys.executable, str(SIMULATOR), "prepare", "--root", str(mount),
                          "--files", str(files), "--size", str(size), "--seed", str(seed)],
                         capture_output=True, text=True, check=True, timeout=120)
    return Path(out.stdout.strip())


async def ransomware_run(mount: Path, work: Path, variant: str, index: int,
                         args: argparse.Namespace) -> dict[str, Any]:
    victims = prepare(mount, args.files, args.size, seed=index)
    before = hashes(victims)
    simulator = work / f"sim-{variant}-{index}.py"
    shutil.copy(SIMULATOR, simulator)
    probe = FreezeProbe(victims)
    session = Session(work / f"home-{variant}-{index}", mount)
    session.agent.bus.subscribe(probe, (ProcessRemediationActivity,), "benchmark-probe")
    async with session:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(simulator), "encrypt", "--dir", str(victims), "--variant", variant)
        returncode = await asyncio.wait_for(proc.wait(), 600)
        found = await until(lambda: bool(session.findings()), 30)
        after_restore = hashes(victims)
        finding = session.findings()[0] if found else None
    after_stop = hashes(victims)
    shutil.rmtree(victims)
    return measure_run(variant, index, before, probe, after_restore, after_stop, finding,
                       returncode, started)


def measure_run(variant: str, index: int, before: dict[str, str], probe: FreezeProbe,
                after_restore: dict[str, str], after_stop: dict[str, str],
                finding: DetectionFinding | None, returncode: int,
                started: float) -> dict[str, Any]:
    frozen = probe.snapshot if probe.snapshot is not None else after_restore
    touched, created = differences(before, frozen)
    lost, leftovers = differences(before, after_restore)
    lost_at_stop, leftovers_at_stop = differences(before, after_stop)
    restore = finding.unmapped.get("restore", {}) if finding is not None else {}
    return {
        "variant": variant, "run": index, "detected": finding is not None,
        "simulator_exit": returncode, "ran_to_end": returncode == 0,
        "touched": len(touched), "created_at_freeze": len(created),
        "lost": len(lost), "leftovers": len(leftovers),
        "lost_paths": lost[:10], "leftover_paths": leftovers[:10],
        "lost_after_agent_stop": len(lost_at_stop) + len(leftovers_at_stop),
        "finding_restored": len(restore.get("restored", [])),
        "finding_lost": len(restore.get("lost", [])),
        "finding_removed": len(restore.get("removed", [])),
        "finding_failed": len(restore.get("failed", {})),
        "detection_s": (probe.at - started) if probe.at is not None else None,
        "actions": finding.unmapped.get("actions") if finding is not None else None,
        "evidence": finding.unmapped.get("evidence") if finding is not None else None,
    }


def summarise_variant(variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    touched = [r["touched"] for r in runs]
    times = [r["detection_s"] for r in runs if r["detection_s"] is not None]
    return {
        "variant": variant, "runs": len(runs),
        "detected": sum(r["detected"] and not r["ran_to_end"] for r in runs),
        "median_touched": statistics.median(touched), "worst_touched": max(touched),
        "finding_median": statistics.median(r["finding_restored"] + r["finding_lost"]
                                            for r in runs),
        "lost": sum(r["lost"] for r in runs), "leftovers": sum(r["leftovers"] for r in runs),
        "median_detection_s": statistics.median(times) if times else None,
    }


# -- 2. overhead ---------------------------------------------------------------------------------

def run_workload(tree: Path, files: int, size: int) -> dict[str, float]:
    times: dict[str, float] = {}
    for phase in PHASES:
        done = subprocess.run([sys.executable, str(HERE), "_workload", phase, str(tree),
                               str(files), str(size)], capture_output=True, text=True,
                              check=True, timeout=600)
        times[phase] = float(done.stdout.strip())
    times["total"] = sum(times.values())
    return times


async def overhead_rep(mount: Path, work: Path, config: str, rep: int,
                       args: argparse.Namespace) -> dict[str, Any]:
    tree = mount / f"honest-{config}-{rep}"
    tree.mkdir()
    subprocess.run(["sync"], check=True)
    if config == "off":
        times = await asyncio.to_thread(run_workload, tree, args.honest_files, args.size)
        stopped, counters, others = 0, {}, []
    else:
        trusted = (str(HERE),) if config == "trusted" else ()
        async with Session(work / f"home-{config}-{rep}", mount, trusted) as session:
            times = await asyncio.to_thread(run_workload, tree, args.honest_files, args.size)
            await asyncio.sleep(1.0)  # let the monitor catch up before judging
            stopped, counters = len(session.findings()), session.counters()
            others = [e.message for e in session.seen if isinstance(e, DetectionFinding)]
    shutil.rmtree(tree)
    tree.with_suffix(".tgz").unlink(missing_ok=True)
    return {"config": config, "rep": rep, "times": times, "false_stops": stopped,
            "counters": counters, "findings": others[:10]}


def summarise_overhead(reps: list[dict[str, Any]]) -> dict[str, Any]:
    configs = sorted({r["config"] for r in reps})
    medians = {c: {k: statistics.median(r["times"][k] for r in reps if r["config"] == c)
                   for k in (*PHASES, "total")} for c in configs}
    base = medians["off"]
    summary: dict[str, Any] = {"medians": medians, "overhead_pct": {}}
    for config in configs:
        if config != "off":
            summary["overhead_pct"][config] = {k: 100 * (medians[config][k] / base[k] - 1)
                                               for k in base}
    summary["false_stops"] = sum(r["false_stops"] for r in reps)
    return summary


# -- driving and printing ------------------------------------------------------------------------

async def benchmark(mount: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"json_out": None}}
    if not args.skip_ransomware:
        runs = []
        for variant in args.variants:
            for index in range(args.runs):
                run = await ransomware_run(mount, work, variant, index, args)
                print(f"  {variant} #{index}: touched {run['touched']}, lost {run['lost']}, "
                      f"leftovers {run['leftovers']}, detection {run['detection_s']}",
                      file=sys.stderr, flush=True)
                runs.append(run)
        results["runs"] = runs
        results["variants"] = [summarise_variant(v, [r for r in runs if r["variant"] == v])
                               for v in args.variants]
    if not args.skip_overhead:
        reps = []
        for rep in range(args.reps):
            for config in ("off", "on", "trusted"):
                reps.append(await overhead_rep(mount, work, config, rep, args))
                print(f"  overhead {config} #{rep}: {reps[-1]['times']['total']:.2f} s",
                      file=sys.stderr, flush=True)
        results["overhead_reps"] = reps
        results["overhead"] = summarise_overhead(reps)
        results["overhead"]["first_write_ms"] = first_write_cost(results["overhead"], args)
    return results


def first_write_cost(summary: dict[str, Any], args: argparse.Namespace) -> float | None:
    """The rewrite phase with the agent less the same phase trusted, per file rewritten."""
    medians = summary["medians"]
    if "on" not in medians or "trusted" not in medians:
        return None
    rewritten = len(range(0, args.honest_files, 2))
    return 1000 * (medians["on"]["rewrite"] - medians["trusted"]["rewrite"]) / rewritten


VARIANT_HEADERS = ("variant", "runs", "stopped", "median touched", "worst touched",
                   "finding restored+lost (median)", "lost", "leftovers", "median detection s")


def report(results: dict[str, Any], markdown: bool) -> None:
    if "variants" in results:
        rows = [[v["variant"], v["runs"], v["detected"], v["median_touched"], v["worst_touched"],
                 v["finding_median"], v["lost"], v["leftovers"], v["median_detection_s"]]
                for v in results["variants"]]
        print_table(VARIANT_HEADERS, rows)
        if markdown:
            print("\n" + markdown_table(VARIANT_HEADERS, rows) + "\n")
    if "overhead" in results:
        summary = results["overhead"]
        headers = ("config", *PHASES, "total", "overhead %")
        rows = [[c, *(summary["medians"][c][k] for k in (*PHASES, "total")),
                 summary["overhead_pct"].get(c, {}).get("total")] for c in summary["medians"]]
        print()
        print_table(headers, rows)
        print(f"false stops on honest work: {summary['false_stops']}; "
              f"first-write cost (rewrite on - trusted, per file): {summary['first_write_ms']} ms")
        if markdown:
            print("\n" + markdown_table(headers, rows))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per variant")
    parser.add_argument("--files", type=int, default=100, help="simulator documents per run")
    parser.add_argument("--size", type=int, default=16384, help="bytes per file")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=5, help="overhead repetitions per config")
    parser.add_argument("--honest-files", type=int, default=2000)
    parser.add_argument("--image-mib", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="2 runs, 40 files, 3 reps of 500")
    parser.add_argument("--skip-ransomware", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; options given explicitly still win
        quick = {"runs": 2, "files": 40, "reps": 3, "honest_files": 500}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root: it loop-mounts an ext4 image and runs the agent's "
                 "fanotify monitor on it")
    with tempfile.TemporaryDirectory(prefix="yoroi-bench-rw-") as scratch:
        work = Path(scratch)
        try:
            with mounted_ext4(work / "mnt", work / "disk.img", args.image_mib) as mount:
                results = asyncio.run(benchmark(mount, work, args))
        except MountUnavailable as exc:
            sys.exit(f"cannot mount the test ext4 image: {exc}")
    report(results, args.markdown)
    if args.json_out:
        write_json(args.json_out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
