"""`yoroi scan` side by side with Debian's `clamscan` and `yara` on the same tree and signatures.

The tree is the first ``--bytes`` (1 GB) of regular files under ``--tree`` (/usr/lib) in sorted
walk order, written to one file list that every tool reads. The signatures are generated here,
from a fixed seed: 1M MD5 hashes (``bench.hdb``), ~3,000 ClamAV body signatures (``bench.ndb``)
and ~20 YARA rules (``bench.yar``), a few of each planted so that they match files of the tree.
ClamAV and Yoroi read the same directory; `yara` gets the YARA rules plus the ``.ndb``
signatures translated by Yoroi's own translator (it has no hash lists).

Goals (issue #3): files/s at least 10x clamscan with archives on; at least 1.5x ``yara -p 1``
with archives off and 2 jobs; peak memory under half of clamscan's.

    .venv/bin/python benchmarks/scan_vs_clamscan.py [--quick] [--json-out FILE] [--profile FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pstats
import random
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
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
    require_tools,
    run_measured,
    tool_version,
    warm_cache,
    write_json,
)

from yoroi.modules.antimalware.signatures import clamav, yararules  # noqa: E402

HASH_PREFIX = "Bench.Hash."
COLD = "yoroi load only, no saved set"
CLAMSCAN_LIMITS = ["--max-filesize=2000M", "--max-scansize=2000M", "--max-scantime=0"]
YOROI_MAX = "2000M"  # the same file size limit for both (clamscan's default is 100 MB)


@dataclass
class Signatures:
    """The generated signature files and what was planted to match the tree."""

    directory: Path  # bench.hdb, bench.ndb, bench.yar: read by clamscan and yoroi
    yara_rules: list[Path]  # for the yara CLI: bench.yar + the .ndb translated to YARA
    planted: dict[str, str] = field(default_factory=dict)  # signature name -> file meant to match
    yara_notes: list[str] = field(default_factory=list)


def pick_tree(root: Path, limit: float, max_file: int) -> list[str]:
    """Regular files (not links) under ``root`` in sorted walk order, up to ``limit`` bytes."""
    chosen, total = [], 0
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size > max_file or "\n" in path:
                continue
            chosen.append(path)
            total += info.st_size
            if total >= limit:
                return chosen
    return chosen


def generate(files: list[str], workdir: Path, hashes: int, bodies: int, rules: int,
             seed: int) -> Signatures:
    """Write the signature directory and the yara rule files."""
    rng = random.Random(seed)
    sigdir = workdir / "signatures"
    sigdir.mkdir()
    result = Signatures(sigdir, [])
    candidates = [p for p in files if 4096 <= os.path.getsize(p) <= 2_000_000]
    elves = [p for p in candidates if _head(p, 4) == b"\x7fELF"]
    texts = [p for p in candidates if b"\0" not in _head(p, 4096)] or candidates
    _write_hdb(sigdir / "bench.hdb", rng, hashes, rng.sample(candidates, 2), result)
    _write_ndb(sigdir / "bench.ndb", rng, bodies, elves, result)
    _write_yar(sigdir / "bench.yar", rng, rules, texts, result)
    result.yara_rules = [sigdir / "bench.yar", _translate_ndb(sigdir / "bench.ndb", workdir)]
    return result


def _head(path: str, size: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _write_hdb(path: Path, rng: random.Random, count: int, planted: list[str],
               result: Signatures) -> None:
    slots = dict(zip(rng.sample(range(count), len(planted)), planted, strict=True))
    with path.open("w") as out:
        for index in range(count):
            name = f"{HASH_PREFIX}{index}"
            if index in slots:
                data = Path(slots[index]).read_bytes()
                digest, size = hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data)
                result.planted[name] = slots[index]
            else:
                digest, size = rng.randbytes(16).hex(), rng.randint(1, 50_000_000)
            out.write(f"{digest}:{size}:{name}\n")


def _write_ndb(path: Path, rng: random.Random, count: int, elves: list[str],
               result: Signatures) -> None:
    lines = [_random_ndb(rng, index) for index in range(count - 2)]
    for index, (source, exact) in enumerate(zip(rng.sample(elves, 2), (False, True),
                                                strict=True)):
        offset, data = _distinctive(Path(source).read_bytes(), rng)
        name = f"Bench.Body.Planted{index}"
        if exact:  # ELF target, absolute offset, one wildcard byte
            body = data[:8].hex() + "??" + data[9:].hex()
            lines.insert(rng.randrange(len(lines)), f"{name}:6:{offset}:{body}")
        else:
            lines.insert(rng.randrange(len(lines)), f"{name}:0:*:{data.hex()}")
        result.planted[name] = source
    path.write_text("\n".join(lines) + "\n")


def _random_ndb(rng: random.Random, index: int) -> str:
    data = rng.randbytes(rng.randint(12, 32))
    cut = rng.randint(6, len(data) - 6)
    style = rng.random()
    if style < 0.5:
        body = data.hex()
    elif style < 0.7:
        body = data[:cut].hex() + "??" + data[cut + 1:].hex()
    elif style < 0.85:
        low = rng.randint(0, 16)
        body = data[:cut].hex() + f"{{{low}-{low + rng.randint(1, 64)}}}" + data[cut:].hex()
    else:
        body = data[:cut].hex() + "*" + data[cut:].hex()
    target = 6 if rng.random() < 0.3 else 0
    offset = str(rng.randint(0, 4096)) if rng.random() < 0.15 else "*"
    return f"Bench.Body.{index}:{target}:{offset}:{body}"


def _distinctive(data: bytes, rng: random.Random, length: int = 24) -> tuple[int, bytes]:
    """A run of bytes varied enough not to occur by chance elsewhere."""
    for _ in range(10_000):
        offset = rng.randrange(len(data) // 4, len(data) - length)
        window = data[offset:offset + length]
        if len(set(window)) >= 18 and data.count(window) == 1:
            return offset, window
    raise SystemExit("no distinctive bytes found in a planted file; try another --seed")


def _write_yar(path: Path, rng: random.Random, count: int, texts: list[str],
               result: Signatures) -> None:
    rules = []
    for index in range(count - 1):
        text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789_", k=rng.randint(10, 16)))
        hexed = " ".join(f"{b:02X}" for b in rng.randbytes(rng.randint(8, 16)))
        condition = "all of them" if index % 3 == 0 else "any of them"
        nocase = " nocase" if index % 4 == 1 else ""
        rules.append(f'rule bench_yara_{index} {{ strings: $a = "{text}"{nocase} '
                     f"$b = {{ {hexed} }} condition: {condition} }}")
    source = rng.choice(texts)
    phrase = _phrase(Path(source).read_bytes(), rng)
    name = "bench_yara_planted"
    rules.append(f'rule {name} {{ strings: $a = "{phrase}" condition: $a }}')
    result.planted[name] = source
    path.write_text("\n".join(rules) + "\n")


def _phrase(data: bytes, rng: random.Random) -> str:
    for _ in range(10_000):
        offset = rng.randrange(0, max(1, len(data) - 40))
        window = data[offset:offset + 28]
        if re.fullmatch(rb"[A-Za-z0-9_ (),.=:]{28}", window) and len(set(window)) >= 12:
            return window.decode()
    raise SystemExit("no plain text phrase found in the planted text file; try another --seed")


def _translate_ndb(ndb: Path, workdir: Path) -> Path:
    """The .ndb signatures as YARA source, by Yoroi's own translator (for the yara CLI)."""
    outcome = clamav.read_ndb(ndb, ndb.read_text())
    if outcome.problems:
        raise SystemExit(f"the translator refused generated signatures: {outcome.problems[:3]}")
    target = workdir / "yara" / "bench_ndb.yar"
    target.parent.mkdir()
    target.write_text(yararules.clamav_source(outcome.rules))
    return target


@dataclass
class Run:
    """One measured command and the files it flagged (path -> detection names)."""

    measurement: Measurement
    flagged: dict[str, set[str]]
    files: int
    bytes: int
    walls: list[float] = field(default_factory=list)  # every try, fastest first


FOUND = re.compile(r"^(?P<path>.*?): (?P<name>\S+) FOUND(?: \(.*\))?$")


def parse_found(output: str) -> dict[str, set[str]]:
    """``path: Name FOUND`` lines (clamscan, yoroi) as path -> names."""
    flagged: dict[str, set[str]] = {}
    for line in output.splitlines():
        match = FOUND.match(line)
        if match:
            flagged.setdefault(match["path"], set()).add(match["name"])
    return flagged


def parse_yara(output: str) -> dict[str, set[str]]:
    """``rule path`` lines as path -> rule names."""
    flagged: dict[str, set[str]] = {}
    for line in output.splitlines():
        rule, _, path = line.partition(" ")
        if path:
            flagged.setdefault(path, set()).add(rule)
    return flagged


def measure(label: str, argv: list[str], files: int, size: int, repeat: int,
            before: Callable[[], None] | None = None) -> Run:
    """Run ``repeat`` times (``before`` each) and keep the run of median wall time."""
    print(f"running {label}: {' '.join(argv)}", file=sys.stderr, flush=True)
    tries = []
    loads = []
    for _ in range(repeat):
        if before is not None:
            before()
        tries.append(run_measured(label, argv))
        loads.append(os.getloadavg()[0])  # the machine is shared: say how busy it was
    tries.sort(key=lambda m: m.wall)
    measured = tries[len(tries) // 2]
    parse = parse_yara if argv[0].endswith("yara") else parse_found
    if measured.exit_code not in (0, 1):
        tail = measured.stderr.strip().splitlines()[-5:]
        print(f"  warning: {label} exited {measured.exit_code}: {tail}", file=sys.stderr)
    print(f"  {', '.join(f'{m.wall:.2f}' for m in tries)} s (1-minute load after each try: "
          f"{', '.join(f'{load:.1f}' for load in loads)})", file=sys.stderr, flush=True)
    return Run(measured, parse(measured.stdout), files, size, [m.wall for m in tries])


def run_all(yoroi: str, sigs: Signatures, listing: Path, tiny: Path,
            files: int, size: int, repeat: int) -> dict[str, Run]:
    """Every measured command, load-only runs first.

    Yoroi keeps its state (the saved signature set) in a home of its own under the work
    directory; the cold load-only run removes that saved set before each try, every other run
    finds it, as every scan after the first one with unchanged signatures does.
    """
    home = sigs.directory.parent / "home"
    common = [yoroi, "--home", str(home), "scan", "--signatures", str(sigs.directory),
              "--no-builtin", "--quiet", "--max-filesize", YOROI_MAX]
    clam = ["clamscan", "-d", str(sigs.directory), "--no-summary", "-i", *CLAMSCAN_LIMITS]
    tiny_size = tiny.stat().st_size
    plan: list[tuple[str, list[str], int, int]] = [
        ("clamscan load only", [*clam, str(tiny)], 1, tiny_size),
        (COLD, [*common, "--jobs", "1", str(tiny)], 1, tiny_size),
        ("yoroi load only", [*common, "--jobs", "1", str(tiny)], 1, tiny_size),
        ("clamscan", [*clam, "--file-list", str(listing)], files, size),
        ("yoroi -j2", [*common, "--jobs", "2", "--file-list", str(listing)], files, size),
        ("yoroi -j1", [*common, "--jobs", "1", "--file-list", str(listing)], files, size),
        ("yara -p 1", ["yara", "-p", "1", *map(str, sigs.yara_rules), "--scan-list",
                       str(listing)], files, size),
        ("yoroi -j2 --no-archives", [*common, "--jobs", "2", "--no-archives", "--file-list",
                                     str(listing)], files, size),
    ]
    def forget() -> None:
        shutil.rmtree(home / "var" / "antimalware" / "signature-cache", ignore_errors=True)

    return {label: measure(label, argv, n, b, repeat, forget if label == COLD else None)
            for label, argv, n, b in plan}


def rate(run: Run) -> float:
    return run.files / run.measurement.wall if run.measurement.wall > 0 else 0.0


def net_rate(runs: dict[str, Run], label: str) -> float:
    """Files/s once the signatures are loaded (wall less the tool's 1-file run)."""
    load = "clamscan load only" if label == "clamscan" else "yoroi load only"
    if label.startswith("yara"):
        return rate(runs[label])  # its compile of ~3,000 rules is well under a second
    return runs[label].files / max(1e-9, runs[label].measurement.wall - runs[load].measurement.wall)


def table(runs: dict[str, Run]) -> tuple[list[str], list[list[object]]]:
    """The headers and rows of the results table."""
    anchors = {"yoroi -j2": ("clamscan", 10.0), "yoroi -j1": ("clamscan", None),
               "yoroi -j2 --no-archives": ("yara -p 1", 1.5)}
    headers = ["run", "files", "MB", "wall s", "files/s", "CPU s", "peak RSS MB",
               "tree RSS MB", "tree PSS MB", "vs anchor", "goal met"]
    rows: list[list[object]] = []
    for label, run in runs.items():
        m = run.measurement
        ratio: object = None
        goal: object = "anchor" if label in ("clamscan", "yara -p 1") else None
        if label in anchors:
            anchor, target = anchors[label]
            value = rate(run) / rate(runs[anchor])
            ratio = f"{value:.2f}x {anchor}"
            goal = None if target is None else ("yes" if value >= target else "no") + \
                f" (>= {target}x)"
        rows.append([label, run.files, round(run.bytes / MB, 1), round(m.wall, 2),
                     round(rate(run), 1), round(m.cpu, 2), round(m.peak_rss / MB, 1),
                     round(m.tree_rss / MB, 1), round(m.tree_pss / MB, 1), ratio, goal])
    return headers, rows


def goals(runs: dict[str, Run]) -> list[dict[str, Any]]:
    """The three goals of the issue, each with its measured value."""
    clam, yara_run = runs["clamscan"], runs["yara -p 1"]
    yoroi, plain = runs["yoroi -j2"], runs["yoroi -j2 --no-archives"]
    memory = yoroi.measurement.tree_pss / clam.measurement.peak_rss
    memory_rss = yoroi.measurement.tree_rss / clam.measurement.peak_rss
    return [
        {"goal": "files/s >= 10x clamscan (archives on, 2 jobs)",
         "value": rate(yoroi) / rate(clam), "met": rate(yoroi) / rate(clam) >= 10},
        {"goal": "files/s >= 1.5x yara -p 1 (archives off, 2 jobs)",
         "value": rate(plain) / rate(yara_run), "met": rate(plain) / rate(yara_run) >= 1.5},
        {"goal": "peak memory <= 0.5x clamscan (yoroi -j2 tree PSS / clamscan peak RSS)",
         "value": memory, "met": memory <= 0.5, "tree_rss_ratio": memory_rss},
    ]


def agreement(runs: dict[str, Run], sigs: Signatures) -> list[str]:
    """Where the tools disagree on which files they flag, and whether the planted ones were."""
    lines = []
    clam, yoroi = set(runs["clamscan"].flagged), set(runs["yoroi -j2"].flagged)
    body_only = {p for p, names in runs["yoroi -j2 --no-archives"].flagged.items()
                 if any(not n.startswith(HASH_PREFIX) for n in names)}
    yara_set = set(runs["yara -p 1"].flagged)
    for title, left, right in (("clamscan", clam, ("yoroi -j2", yoroi)),
                               ("yara -p 1", yara_set, ("yoroi --no-archives, non-hash",
                                                        body_only))):
        name, other = right
        lines.append(f"{title} flagged {len(left)} files, {name} {len(other)}; "
                     f"only {title}: {sorted(left - other)}; only {name}: {sorted(other - left)}")
    for signature, path in sigs.planted.items():
        seen = {label: path in run.flagged for label, run in runs.items()
                if "load only" not in label}
        lines.append(f"planted {signature} in {path}: " +
                     ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in seen.items()))
    lines.append("yara cannot use the 1M MD5 hash list: its run has body signatures and "
                 "YARA rules only (the hash list is a dictionary lookup per file in the others)")
    return lines


def profile(yoroi: str, sigs: Signatures, listing: Path, out: Path, top: int = 20) -> str:
    """Profile `yoroi scan --jobs 1` on the tree with cProfile; the top costs by own time."""
    home = sigs.directory.parent / "home"
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), yoroi, "--home", str(home), "scan",
            "--signatures",
            str(sigs.directory), "--no-builtin", "--quiet", "--max-filesize", YOROI_MAX,
            "--jobs", "1", "--file-list", str(listing)]
    print(f"profiling: {' '.join(argv)}", file=sys.stderr, flush=True)
    run_measured("profile", argv)
    import io

    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path("/usr/lib"))
    parser.add_argument("--bytes", type=float, default=1e9, help="tree size (default 1e9)")
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--ndb", type=int, default=3000, help="body signatures")
    parser.add_argument("--yara-rules", type=int, default=20)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 MB and 100k hashes")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median is kept")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--profile", type=Path, help="also profile yoroi -j1 into FILE")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--yoroi", default=str(Path(sys.executable).with_name("yoroi")))
    args = parser.parse_args(argv)
    if args.quick:
        args.bytes, args.hashes = min(args.bytes, 1e8), min(args.hashes, 100_000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_tools(["clamscan", "yara"], "apt-get install clamav yara")
    if not Path(args.yoroi).exists():
        sys.exit(f"yoroi not found at {args.yoroi}; pass --yoroi PATH")
    workdir = Path(tempfile.mkdtemp(prefix="yoroi-bench-scan-"))
    try:
        report = benchmark(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json_out:
        write_json(args.json_out, report)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    files = pick_tree(args.tree, args.bytes, 2_000_000_000)
    listing, tiny = workdir / "files.txt", workdir / "tiny.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    tiny.write_text("hello\n")
    size = sum(os.path.getsize(p) for p in files)
    print(f"tree: {len(files)} files, {size / MB:.0f} MB under {args.tree}", file=sys.stderr)
    sigs = generate(files, workdir, args.hashes, args.ndb, args.yara_rules, args.seed)
    warm_cache(files)
    runs = run_all(args.yoroi, sigs, listing, tiny, len(files), size, args.repeat)
    headers, rows = table(runs)
    print()
    print_table(headers, rows)
    if args.markdown:
        print("\n" + markdown_table(headers, rows) + "\n")
    met = goals(runs)
    for goal in met:
        print(f"goal: {goal['goal']}: {goal['value']:.2f} -> {'met' if goal['met'] else 'NOT met'}")
    notes = agreement(runs, sigs)
    print("\n".join(notes))
    loads = {k: runs[k].measurement.wall for k in ("clamscan load only", COLD, "yoroi load only")}
    print(f"signature load (1-file scan): {loads}")
    print("files/s net of signature load: " + ", ".join(
        f"{label} {net_rate(runs, label):.0f}" for label in runs if "load only" not in label))
    profile_text = profile(args.yoroi, sigs, listing, args.profile) if args.profile else ""
    if profile_text:
        print(profile_text)
    return {
        "machine": machine(),
        "versions": {"clamscan": tool_version(["clamscan", "--version"]),
                     "yara": tool_version(["yara", "--version"]),
                     "yoroi": tool_version([args.yoroi, "--version"])},
        "command": sys.argv,
        "repeat": args.repeat,
        "tree": {"root": args.tree, "files": len(files), "bytes": size},
        "signatures": {"md5": args.hashes, "ndb": args.ndb, "yara": args.yara_rules,
                       "planted": sigs.planted},
        "runs": {label: {"files": r.files, "bytes": r.bytes, "files_per_s": rate(r),
                         "walls": r.walls, "flagged": len(r.flagged), "measurement": r.measurement}
                 for label, r in runs.items()},
        "goals": met,
        "agreement": notes,
        "profile_top": profile_text,
    }


if __name__ == "__main__":
    main()
