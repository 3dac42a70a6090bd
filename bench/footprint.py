"""Cold start and idle memory of `hub run` on the embedded default (SQLite, web chat alone).

Each run starts a real process in a fresh temporary directory, twice: the first start creates
the database (migrations applied), the second finds the schema current, which is every later
start in production. For each start it times process start to the first 200 from /healthz;
after the second it waits idle and reads VmRSS from /proc/<pid>/status, then sends SIGTERM and
times the exit. Prints the median of every figure over the runs (and the best run's time).

    python bench/footprint.py [--runs 5] [--idle 3] [--imports]

Each run also measures the floor: a bare interpreter importing only the libraries `hub run`
cannot start without (aiohttp's server, SQLAlchemy's async engine on aiosqlite,
pydantic-settings); what is above it is the hub's own.

`--imports` also prints where the floor itself goes: a bare interpreter imports the required
libraries step by step (asyncio, pydantic, pydantic-settings, aiohttp, SQLAlchemy, its ORM and
async engine, the aiosqlite dialect) and each step's CPU and RSS are what it adds, shared
dependencies counted where first imported; their sum is the floor, which on a slow 2-core
machine is above the goal by itself. Then it starts the hub once under `python -X importtime`
and splits the start's imports, by top-level package, into the floor's modules and what the
hub adds to them: the place to look for what is imported but not needed.

The hub runs as it does once installed, with its bytecode cached (pip compiles it at install;
a checkout writes `__pycache__` at its first start): the child's environment drops
PYTHONDONTWRITEBYTECODE, which would otherwise make every start compile the hub's ~60 modules
from source.

Goal on a 2-core server: cold start ≤ 0.45 s, idle RSS ≤ 60 MB.
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GOAL_START_S = 0.45
GOAL_RSS_MB = 60.0
# What `hub run` cannot start without: the floor under the hub's own imports and work.
REQUIRED = ("aiohttp.web", "sqlalchemy.ext.asyncio", "sqlalchemy.dialects.sqlite.aiosqlite", "pydantic_settings")


@dataclass
class Start:
    seconds: float
    cpu_s: float  # CPU the process used to get there: what a busy machine does not inflate
    proc: subprocess.Popen[bytes]


@dataclass
class Run:
    first_start_s: float
    start_s: float
    start_cpu_s: float
    rss_mb: float
    stop_s: float
    # The required libraries alone, measured in the same run (so under the same load).
    floor_s: float
    floor_cpu_s: float
    floor_rss_mb: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_command() -> list[str]:
    # The console script next to this interpreter, as a user runs it; else the module.
    script = Path(sys.executable).with_name("hub")
    return [str(script), "run"] if script.exists() else [sys.executable, "-m", "hub", "run"]


def child_env() -> dict[str, str]:
    # No HUB_ variable of the caller's; bytecode cached as in an installed hub (see above).
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_") and k != "PYTHONDONTWRITEBYTECODE"}


def healthz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_hub(workdir: Path, port: int, timeout: float = 30.0, command: list[str] | None = None) -> Start:
    env = child_env()
    env["HUB_HTTP__PORT"] = str(port)
    t0 = time.perf_counter()
    with open(workdir / "stderr.log", "ab") as stderr:  # the child keeps its own copy of the file
        proc = subprocess.Popen(command or hub_command(), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=stderr)
    # Wait for "Hub listening on" first, then for the 200: polling all along would have the
    # hub answer hundreds of 503s while it starts, on the same two cores.
    assert proc.stdout is not None
    if select.select([proc.stdout], [], [], timeout)[0]:
        proc.stdout.readline()
    while not healthz_ok(port):
        if proc.poll() is not None:
            raise SystemExit(f"hub exited with status {proc.returncode} before serving /healthz")
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"no 200 from /healthz within {timeout} s")
        time.sleep(0.002)
    return Start(time.perf_counter() - t0, cpu_seconds(proc.pid), proc)


def cpu_seconds(pid: int) -> float:
    # /proc/<pid>/stat: utime and stime are fields 14 and 15, in clock ticks (after the
    # parenthesised command name, which may contain spaces).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("VmRSS not found (this needs Linux /proc)")


def stop_hub(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
    if code != 0:
        raise SystemExit(f"hub exited with status {code} after SIGTERM")
    return time.perf_counter() - t0


FLOOR_CODE = f"""
import os
import {", ".join(REQUIRED)}
t = os.times()
rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1]
print(t.user + t.system, int(rss) / 1024, flush=True)
os._exit(0)  # the parent has what it needs: no interpreter teardown
"""


def library_floor() -> tuple[float, float, float]:
    """The required libraries alone in a bare interpreter: seconds to imported, its CPU and RSS."""
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-c", FLOOR_CODE], env=child_env(), stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        seconds = time.perf_counter() - t0
    cpu_s, rss = (float(x) for x in line.split())
    return seconds, cpu_s, rss


def one_run(idle_s: float) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="hub-footprint-"))
    try:
        port = free_port()
        first = start_hub(workdir, port)
        stop_hub(first.proc)
        again = start_hub(workdir, port)
        time.sleep(idle_s)
        rss = rss_mb(again.proc.pid)
        stop_s = stop_hub(again.proc)
        floor = library_floor()
        return Run(first.seconds, again.seconds, again.cpu_s, rss, stop_s, *floor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# The floor in the order a bare interpreter imports it, each step with what it pulls in first
# (asyncio brings ssl and so OpenSSL; pydantic-settings brings importlib.metadata and email...).
FLOOR_STEPS = (
    ("asyncio",),
    ("pydantic",),
    ("pydantic_settings",),
    ("aiohttp", "aiohttp.web"),
    ("sqlalchemy",),
    ("sqlalchemy.orm", "sqlalchemy.ext.asyncio"),
    ("sqlalchemy.dialects.sqlite.aiosqlite",),
)
assert {m for step in FLOOR_STEPS for m in step} >= set(REQUIRED)

FLOOR_STEPS_CODE = f"""
import importlib, os, sys
def mark(label):
    t = os.times()
    rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1]
    print(label, t.user + t.system, int(rss) / 1024, len(sys.modules), flush=True)
mark("interpreter")
for step in {FLOOR_STEPS!r}:
    for name in step:
        importlib.import_module(name)
    mark("+".join(step))
os._exit(0)
"""


@dataclass
class Step:
    label: str
    cpu_s: float  # what this step added
    rss_mb: float
    modules: int


def floor_steps(runs: int) -> list[Step]:
    """The floor step by step, in a bare interpreter: the median of `runs` of what each adds."""
    labels: list[str] = []
    samples: list[list[tuple[float, float, float]]] = []  # per run, per step: CPU, RSS, modules so far
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", FLOOR_STEPS_CODE], env=child_env(), capture_output=True, check=True)
        rows = [line.split() for line in out.stdout.decode().splitlines()]
        labels = [row[0] for row in rows]
        samples.append([(float(cpu), float(rss), float(n)) for _label, cpu, rss, n in rows])

    def added(i: int, k: int) -> float:
        return statistics.median(run[i][k] - (run[i - 1][k] if i else 0.0) for run in samples)

    return [Step(label, added(i, 0), added(i, 1), int(added(i, 2))) for i, label in enumerate(labels)]


def importtime_rows(log: str) -> list[tuple[str, int]]:
    """(module, self µs) for each module -X importtime names ("import time: self | cumulative | name")."""
    rows = []
    for line in log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "self [us]" not in line:
            head, _cumulative, name = line.split("|")
            rows.append((name.strip(), int(head.split(":")[1])))
    return rows


def by_package(rows: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(top-level package, self µs, modules), the heaviest first."""
    out: dict[str, list[int]] = {}
    for name, us in rows:
        entry = out.setdefault(name.split(".")[0], [0, 0])
        entry[0] += us
        entry[1] += 1
    return sorted(((k, us, n) for k, (us, n) in out.items()), key=lambda row: -row[1])


def print_packages(title: str, rows: list[tuple[str, int]], top: int) -> None:
    total = sum(us for _name, us in rows)
    print(f"  {title}: {len(rows)} modules, {total / 1e6:.3f} s")
    for package, us, n in by_package(rows)[:top]:
        print(f"    {package:28s} {us / 1000:7.1f} ms  {n:4d} modules")


def import_profile(runs: int, top: int = 12) -> None:
    """Where the floor goes, step by step; then the hub's start (schema current) under
    -X importtime, split into the floor's modules and what the hub adds to them."""
    steps = floor_steps(runs)
    print(
        f"where the floor goes (a bare interpreter importing it step by step; what each step adds, median of {runs}):"
    )
    for st in steps:
        print(f"  {st.label:48s} {st.cpu_s:6.3f} s CPU  {st.rss_mb:+6.1f} MB  {st.modules:+4d} modules")
    cpu, rss = sum(st.cpu_s for st in steps), sum(st.rss_mb for st in steps)
    verdict = "above" if cpu > GOAL_START_S or rss > GOAL_RSS_MB else "within"
    print(
        f"  {'the floor':48s} {cpu:6.3f} s CPU  {rss:6.1f} MB   goal {GOAL_START_S} s, {GOAL_RSS_MB:g} MB:"
        f" the floor alone is {verdict} it on this machine"
    )
    workdir = Path(tempfile.mkdtemp(prefix="hub-footprint-"))
    try:
        floor_log = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {', '.join(REQUIRED)}"],
            env=child_env(),
            capture_output=True,
            check=True,
        ).stderr.decode()
        floor_modules = {name for name, _us in importtime_rows(floor_log)}
        port = free_port()
        stop_hub(start_hub(workdir, port).proc)  # creates the schema: the profiled start finds it current
        started = start_hub(workdir, port, command=[sys.executable, "-X", "importtime", "-m", "hub", "run"])
        stop_hub(started.proc)
        rows = importtime_rows((workdir / "stderr.log").read_text())
        print("imports at start, schema current (self time, inflated by -X importtime):")
        print_packages(
            "the floor's (imported by the required libraries alone too)",
            [r for r in rows if r[0] in floor_modules],
            top,
        )
        print_packages("what the hub adds", [r for r in rows if r[0] not in floor_modules], top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading RSS")
    parser.add_argument("--imports", action="store_true", help="also print import time by package")
    args = parser.parse_args()

    runs: list[Run] = []
    for i in range(args.runs):
        r = one_run(args.idle)
        runs.append(r)
        print(
            f"run {i + 1}: first start {r.first_start_s:.3f} s, start {r.start_s:.3f} s"
            f" ({r.start_cpu_s:.2f} s CPU), idle RSS {r.rss_mb:.1f} MB, stop {r.stop_s:.3f} s",
            flush=True,
        )

    def median(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    def best(attr: str) -> str:
        # On a shared machine the least disturbed run says most about the code.
        return f"(best {min(getattr(r, attr) for r in runs):.3f})"

    load = os.getloadavg()[0]
    print(f"median of {args.runs} runs ({' '.join(hub_command())}, web channel alone, SQLite; load {load:.1f}):")
    for label, value in (
        ("cold start, new database (migrations applied)", f"{median('first_start_s'):.3f} s {best('first_start_s')}"),
        ("cold start, schema current", f"{median('start_s'):.3f} s {best('start_s')}   goal ≤ {GOAL_START_S} s"),
        ("  CPU the process used to get there", f"{median('start_cpu_s'):.3f} s {best('start_cpu_s')}"),
        (f"idle RSS after {args.idle:g} s", f"{median('rss_mb'):.1f} MB  goal ≤ {GOAL_RSS_MB:g} MB"),
        ("exit after SIGTERM", f"{median('stop_s'):.3f} s"),
        ("floor: the required libraries alone", f"{median('floor_s'):.3f} s {best('floor_s')}"),
        ("  its CPU", f"{median('floor_cpu_s'):.3f} s {best('floor_cpu_s')}"),
        ("  its RSS", f"{median('floor_rss_mb'):.1f} MB"),
    ):
        print(f"  {label + ':':<48} {value}")
    above = [median(a) - median(b) for a, b in (("start_s", "floor_s"), ("start_cpu_s", "floor_cpu_s"))]
    print(
        f"  the hub above the floor: {above[0]:+.3f} s, {above[1]:+.3f} s CPU,"
        f" {median('rss_mb') - median('floor_rss_mb'):+.1f} MB (floor: {', '.join(REQUIRED)})"
    )
    if args.imports:
        import_profile(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
