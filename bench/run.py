#!/usr/bin/env python3
"""Side-by-side benchmark: the backend direct, nginx, haproxy and ficus on one machine.

Everything runs on 127.0.0.1, every loop is bounded, and only the processes this
script started are stopped. See README.md ("Performance") for how to read the output.

    bench/run.sh                   # full run (a few minutes)
    bench/run.sh --smoke           # a few seconds per config: checks the harness still works
    bench/run.sh --scenarios 7     # shadowing only: nginx mirror vs ficus shadow, off/fast/slow target
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKEND_PORTS = (18080, 18081)
PORTS = {"direct": 18080, "nginx": 18082, "haproxy": 18083, "ficus": 18084}
FICUS_ADMIN = 18094
# Scenario 7: the shadow/mirror targets (one extra bench_backend process) and the extra
# proxy instances, each on its own port so the six configs can run interleaved.
MIRROR_DELAY = "200ms"
MIRROR_TARGETS = {"fast": 18085, "slow": 18086}
SHADOW_PORTS = {"nginx mirror fast": 18087, "nginx mirror slow": 18088, "ficus shadow fast": 18089, "ficus shadow slow": 18090}
SHADOW_ADMIN = {"ficus shadow fast": 18095, "ficus shadow slow": 18096}
SHADOW_KEY = "7. shadowing"
# Scenario 2: a second ficus with the 10,000-route table, run interleaved with a 10-route one.
LARGE_TABLE = "ficus 10,000 routes"
LARGE_PORT, LARGE_ADMIN = 18091, 18097
LARGE_KEY = "2. GET, 10,000 routes"
NOFILE = 20000


# ---------------------------------------------------------------- processes


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))


# --pin: the proxy under test on one CPU, the load (wrk) and the backends on the other.
PIN = {"proxy": None, "load": None}


def setup(role: str):
    """What a child runs before exec: the descriptor limit, and its CPUs under --pin."""
    def run() -> None:
        raise_nofile()
        cpus = PIN[role]
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return run


class Procs:
    """The processes this run started; stopped (and only they) at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict | None = None, role: str = "proxy") -> subprocess.Popen:
        proc = subprocess.Popen(
            args,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=setup(role),
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.started):
            self.stop(proc)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def cpu_seconds(pid: int, user_only: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat (1-based), here 11 and 12.
    user, system = int(fields[11]), int(fields[12])
    return (user if user_only else user + system) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (from /proc/stat)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def process_tree_cpu(pids: list[int], user_only: bool = False) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid, user_only)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


# ---------------------------------------------------------------- configs


def nginx_conf(tmp: Path, port: int, scenario: str, mirror: str | None = None, name: str = "nginx") -> Path:
    """`mirror`: None, or "fast"/"slow": mirror every request to that scenario-7 target."""
    split = ""
    upstream = "backend"
    mirror_here = ""
    mirror_location = ""
    if mirror:
        split += f"""
    upstream mirror_up {{ server 127.0.0.1:{MIRROR_TARGETS[mirror]}; keepalive 64; }}
"""
        mirror_here = """
            mirror /mirror;
            mirror_request_body off;"""
        mirror_location = """
        location = /mirror {
            internal;
            proxy_pass http://mirror_up$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }"""
    if scenario == "split":
        split += """
    upstream new { server 127.0.0.1:18081; keepalive 64; }
    split_clients "${http_x_user_id}" $pool { 30% new; * backend; }
"""
        upstream = "$pool"
    slug = name.replace(" ", "-")
    conf = tmp / f"{slug}-{scenario}.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/{slug}.pid;
error_log {tmp}/{slug}-error.log warn;
worker_rlimit_nofile {NOFILE};
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    client_max_body_size 0;
    upstream backend {{ server 127.0.0.1:{BACKEND_PORTS[0]}; keepalive 64; }}
    {split}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=65535;
        location / {{{mirror_here}
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}{mirror_location}
    }}
}}
"""
    )
    return conf


def haproxy_conf(tmp: Path, port: int, scenario: str) -> Path:
    backend = f"""
backend app
    server s1 127.0.0.1:{BACKEND_PORTS[0]}
"""
    if scenario == "split":
        backend = f"""
backend app
    balance hdr(x-user-id)
    hash-type consistent
    server legacy 127.0.0.1:{BACKEND_PORTS[0]} weight 70
    server new 127.0.0.1:{BACKEND_PORTS[1]} weight 30
"""
    conf = tmp / f"haproxy-{scenario}.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    # haproxy reserves two descriptors per connection; this machine's hard limit is 20,000.
    maxconn 9990
    ulimit-n 20000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend app
{backend}
"""
    )
    return conf


def ficus_table(
    tmp: Path,
    port: int,
    scenario: str,
    routes: int,
    variant: int = 0,
    shadow: str | None = None,
    admin: int = FICUS_ADMIN,
    name: str = "ficus",
) -> Path:
    """`shadow`: None, or "fast"/"slow": upstream `new` is that scenario-7 target, and the
    `api` route mirrors every request to it."""
    new_port = MIRROR_TARGETS[shadow] if shadow else BACKEND_PORTS[1]
    lines = [
        'default = "legacy"',
        "[listen]",
        f'proxy = "127.0.0.1:{port}"',
        f'admin = "127.0.0.1:{admin}"',
        "[upstreams.legacy]",
        f'endpoints = ["http://127.0.0.1:{BACKEND_PORTS[0]}"]',
        "[upstreams.new]",
        f'endpoints = ["http://127.0.0.1:{new_port}"]',
    ]
    for i in range(routes):
        lines += [
            "[[routes]]",
            f'name = "svc{i}"',
            f'path = "/svc{i}/items/{{id}}"' if i % 2 == 0 else f'prefix = "/svc{i}"',
            'upstream = "legacy"',
        ]
    if scenario == "split":
        lines += [
            "[[routes]]",
            'name = "api"',
            'prefix = "/api"',
            "split = { legacy = 70, new = 30 }",
            'sticky = "header:x-user-id"',
        ]
    else:
        lines += ["[[routes]]", 'name = "api"', 'prefix = "/api"', 'upstream = "legacy"']
    if shadow:
        lines.append('shadow = { upstream = "new", sample = 1.0, timeout = "5s", concurrency = 64 }')
    # A comment that differs per variant: scenario 6 alternates two tables.
    lines.append(f"# variant {variant}")
    # One directory per instance: ficus watches its table's file.
    path = tmp / name.replace(" ", "-") / "routes.toml"
    path.parent.mkdir(exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text("\n".join(lines) + "\n")
    temp.rename(path)
    return path


# ---------------------------------------------------------------- wrk


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non2xx: int
    cpu_us_per_req: float | None
    busy_other: float
    user_us_per_req: float | None = None  # the user-mode part of cpu_us_per_req
    shadow: dict[str, int] | None = None  # scenario 7, ficus: shadow outcomes during this run


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)
    peak_rss_kib: int = 0
    note: str = ""


def to_ms(text: str) -> float:
    # wrk prints latencies with the units us, ms and s (format_time_us in its units.c).
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unexpected latency in wrk's output: {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def percentile_ms(out: str, percent: int) -> float:
    """A line of wrk's "Latency Distribution" block, such as `     50%    1.91ms`.

    Anchored to the start of a line: unanchored, `50%` also matched the end of the
    "+/- Stdev" column of the thread stats (`85.50%`), then took the next word
    ("Req/Sec") as the latency, which came out as nan.
    """
    block = out.split("Latency Distribution", 1)
    if len(block) != 2:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{out}")
    m = re.search(rf"^\s*{percent}(?:\.0+)?%\s+(\S+)\s*$", block[1], re.M)
    if not m:
        raise RuntimeError(f"no {percent}% line in wrk's latency distribution:\n{out}")
    return to_ms(m.group(1))


def wrk(url: str, seconds: float, connections: int, extra: list[str], measured: list[int], all_pids: list[int]) -> Run:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", *extra, url]
    cpu_before = process_tree_cpu(measured)
    user_before = process_tree_cpu(measured, user_only=True)
    busy_before = machine_busy_seconds()
    ours_before = process_tree_cpu(all_pids)
    wrk_cpu_before = children_cpu()
    wrk_proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=setup("load"))
    wrk_cpu = children_cpu() - wrk_cpu_before
    cpu_after = process_tree_cpu(measured)
    user_after = process_tree_cpu(measured, user_only=True)
    busy_after = machine_busy_seconds()
    ours_after = process_tree_cpu(all_pids)
    out = wrk_proc.stdout
    if "requests in" not in out:
        raise RuntimeError(f"wrk failed: {' '.join(cmd)}\n{out}\n{wrk_proc.stderr}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = percentile_ms(out, 50)
    p99 = percentile_ms(out, 99)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    cpu = (cpu_after - cpu_before) * 1e6 / requests if measured and requests else None
    # CPU used by processes this script did not start (wrk included in ours via its own time).
    wall = seconds
    other = (busy_after - busy_before) - (ours_after - ours_before) - wrk_cpu
    user = (user_after - user_before) * 1e6 / requests if measured and requests else None
    busy = max(0.0, other) / (wall * os.cpu_count())
    return Run(rps, p50, p99, requests, errors, non2xx, cpu, busy, user_us_per_req=user)


def children_cpu() -> float:
    # CPU of reaped children. Taken right around the wrk call, so the delta is wrk's own:
    # a delta since the previous call also counted the cargo build and every proxy stopped
    # in between, which hid other processes' load in the first run of each scenario.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- idle connections


async def hold_idle(port: int, count: int, ready: asyncio.Event, release: asyncio.Event) -> int:
    """Opens `count` keep-alive connections, one request each, then keeps them idle."""
    request = b"GET /api/idle HTTP/1.1\r\nHost: bench\r\n\r\n"
    conns = []
    ok = 0
    sem = asyncio.Semaphore(500)

    async def one() -> None:
        nonlocal ok
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            if m:
                await asyncio.wait_for(reader.readexactly(int(m.group(1))), 10)
            if head.startswith(b"HTTP/1.1 200"):
                ok += 1
            conns.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    ready.set()
    await release.wait()
    for writer in conns:
        writer.close()
    return ok


def idle_memory(pid: int, port: int, count: int) -> tuple[float, int]:
    """Per-connection user memory (KiB) of `pid` holding `count` idle keep-alive connections."""

    async def main() -> tuple[float, int]:
        # Warm up: one connection through, so lazily allocated state is not counted per connection.
        warm_ready, warm_release = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(hold_idle(port, 16, warm_ready, warm_release))
        await warm_ready.wait()
        warm_release.set()
        await task
        await asyncio.sleep(0.5)
        before = status_kib(pid, "VmRSS")
        ready, release = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(hold_idle(port, count, ready, release))
        await ready.wait()
        await asyncio.sleep(1.0)  # let the server settle its buffers
        after = status_kib(pid, "VmRSS")
        release.set()
        ok = await task
        return (after - before) / count, ok

    raise_nofile()
    return asyncio.run(main())


# ---------------------------------------------------------------- the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds per config")
    parser.add_argument("--seconds", type=float, help="wrk duration per run (default 10, smoke 2)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3, smoke 1)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--idle",
        type=int,
        help="idle connections for scenario 5 (default 9500: the hard descriptor limit here is 20,000 "
        "and haproxy needs two per connection; smoke 500)",
    )
    parser.add_argument("--reload-seconds", type=float, help="scenario 6 duration (default 32, smoke 3)")
    parser.add_argument("--threads", type=int, default=1, help="ficus --threads (default 1, like one nginx worker)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the proxy under test on CPU 0 and wrk and the backends on CPU 1 (steadier on 2 cores)",
    )
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.smoke else 10.0)
    repeats = args.repeats or (1 if args.smoke else 3)
    idle = args.idle or (500 if args.smoke else 9_500)
    reload_seconds = args.reload_seconds or (3.0 if args.smoke else 32.0)
    scenarios = [s.strip() for s in args.scenarios.split(",")]

    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    peers = [p for p in ("nginx", "haproxy") if shutil.which(p) or Path(f"/usr/sbin/{p}").exists()]
    for missing in {"nginx", "haproxy"} - set(peers):
        print(f"note: {missing} not installed, skipped (apt-get install nginx-light haproxy)", file=sys.stderr)
    binaries = {"nginx": shutil.which("nginx") or "/usr/sbin/nginx", "haproxy": shutil.which("haproxy") or "/usr/sbin/haproxy"}

    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "--bin", "ficus", "--example", "bench_backend"],
            cwd=ROOT,
            check=True,
        )
    ficus_bin = ROOT / "target/release/ficus"
    backend_bin = ROOT / "target/release/examples/bench_backend"

    raise_nofile()
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            print("--pin needs two CPUs", file=sys.stderr)
            return 2
        PIN["proxy"], PIN["load"] = {0}, {1}
    needed = [*BACKEND_PORTS, *PORTS.values(), FICUS_ADMIN]
    if "2" in scenarios:
        needed += [LARGE_PORT, LARGE_ADMIN]
    if "7" in scenarios:
        needed += [*MIRROR_TARGETS.values(), *SHADOW_PORTS.values(), *SHADOW_ADMIN.values()]
    busy = sorted({p for p in needed if port_open(p)})
    if busy:
        print(f"ports already in use: {busy}; stop whatever listens there first", file=sys.stderr)
        return 2
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="ficus-bench-"))
    results: dict[str, dict[str, Series]] = {}
    try:
        backend = procs.start(
            [str(backend_bin), *(f"127.0.0.1:{p}" for p in BACKEND_PORTS)], tmp / "backend.log", role="load"
        )
        for p in BACKEND_PORTS:
            wait_port(p)

        def port_of(name: str) -> int:
            return LARGE_PORT if name == LARGE_TABLE else PORTS.get(name) or SHADOW_PORTS[name]

        def start_target(name: str, scenario: str, routes: int) -> subprocess.Popen | None:
            # name: "direct", "nginx", "haproxy", "ficus", or a scenario-7 config such as
            # "nginx mirror slow" / "ficus shadow fast" (kind, then the mirror target).
            port = port_of(name)
            kind = name.split()[0]
            mirror = name.split()[-1] if name in SHADOW_PORTS else None
            slug = name.replace(" ", "-")
            if kind == "direct":
                return None
            if kind == "nginx":
                conf = nginx_conf(tmp, port, scenario, mirror, name)
                proc = procs.start([binaries["nginx"], "-c", str(conf), "-p", str(tmp)], tmp / f"{slug}.log")
            elif kind == "haproxy":
                proc = procs.start([binaries["haproxy"], "-db", "-f", str(haproxy_conf(tmp, port, scenario))], tmp / "haproxy.log")
            else:
                admin = LARGE_ADMIN if name == LARGE_TABLE else SHADOW_ADMIN.get(name, FICUS_ADMIN)
                if name == LARGE_TABLE:
                    routes = 10_000
                table = ficus_table(tmp, port, scenario, routes, shadow=mirror, admin=admin, name=name)
                proc = procs.start(
                    [str(ficus_bin), "--threads", str(args.threads), "serve", "--config", str(table)],
                    tmp / f"{slug}.log",
                    env={"RUST_LOG": "warn"},
                )
            wait_port(port)
            return proc

        def scenario_wrk(
            key: str,
            scenario: str,
            routes: int,
            targets: list[str],
            path: str,
            extra: list[str],
            side_pids: tuple[int, ...] = (),
            after_run=None,
        ) -> None:
            """side_pids: other processes of ours in play (counted as ours, not as noise).
            after_run(target, run): called right after each wrk run."""
            started = {t: start_target(t, scenario, routes) for t in targets}
            series = {t: Series() for t in targets}
            try:
                for repeat in range(repeats):
                    # Each repeat starts one config further on (A B C, B C A, C A B), so no
                    # config always runs right after the same one or in the same place.
                    shift = repeat % len(targets)
                    for t in targets[shift:] + targets[:shift]:
                        proc = started[t]
                        measured = [proc.pid] if proc else [backend.pid]
                        all_pids = [backend.pid, *side_pids] + [p.pid for p in started.values() if p]
                        run = wrk(f"http://127.0.0.1:{port_of(t)}{path}", seconds, args.connections, extra, measured, all_pids)
                        if after_run:
                            after_run(t, run)
                        series[t].runs.append(run)
                for t, proc in started.items():
                    series[t].peak_rss_kib = status_kib(proc.pid if proc else backend.pid, "VmHWM")
            finally:
                for proc in started.values():
                    if proc:
                        procs.stop(proc)
            results[key] = series

        targets = ["direct", *peers, "ficus"]
        if "1" in scenarios:
            scenario_wrk("1. GET, 10 routes", "plain", 10, targets, "/api/orders/7", [])
        if "2" in scenarios:
            # Interleaved with a 10-route ficus: the two differ by less than this machine's drift.
            scenario_wrk(LARGE_KEY, "plain", 10, ["ficus", LARGE_TABLE], "/api/orders/7", [])
        if "3" in scenarios:
            lua = tmp / "users.lua"
            lua.write_text(
                'local n = 0\nrequest = function()\n  n = n + 1\n'
                '  return wrk.format("GET", "/api/orders/7", { ["x-user-id"] = "user-" .. (n % 1000) })\nend\n'
            )
            scenario_wrk("3. sticky split 70/30", "split", 10, [*peers, "ficus"], "/api/orders/7", ["-s", str(lua)])
        if "4" in scenarios:
            lua = tmp / "post.lua"
            lua.write_text(
                'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            )
            scenario_wrk("4. POST 1 MiB", "plain", 10, targets, "/api/upload", ["-s", str(lua)])
        if "5" in scenarios:
            series = {}
            for t in targets:
                proc = start_target(t, "plain", 10)
                pid = proc.pid if proc else backend.pid
                try:
                    per_conn, ok = idle_memory(pid, PORTS[t], idle)
                    s = Series(note=f"{per_conn:.2f} KiB/conn ({ok}/{idle} ok)")
                    s.peak_rss_kib = status_kib(pid, "VmHWM")
                    series[t] = s
                finally:
                    if proc:
                        procs.stop(proc)
            results["5. idle keep-alive connections"] = series
        if "6" in scenarios:
            proc = start_target("ficus", "plain", 10)
            try:
                stop_at = time.monotonic() + reload_seconds
                reloads = 0

                def flipper() -> None:
                    nonlocal reloads
                    variant = 1
                    while time.monotonic() < stop_at:
                        ficus_table(tmp, PORTS["ficus"], "plain", 10, variant)
                        os.kill(proc.pid, signal.SIGHUP)
                        variant += 1
                        reloads += 1
                        time.sleep(0.1)

                import threading

                thread = threading.Thread(target=flipper)
                thread.start()
                run = wrk(f"http://127.0.0.1:{PORTS['ficus']}/api/orders/7", reload_seconds, args.connections, [], [proc.pid], [backend.pid, proc.pid])
                thread.join()
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{FICUS_ADMIN}/metrics", timeout=5).read().decode()
                generation = int(float(re.search(r"^ficus_config_generation (\S+)", metrics, re.M).group(1)))
                results["6. reload every 100 ms under load"] = {
                    "ficus": Series(
                        runs=[run],
                        peak_rss_kib=status_kib(proc.pid, "VmHWM"),
                        note=f"{reloads} table writes + SIGHUP, generation {generation}, "
                        f"{run.errors} socket errors, {run.non2xx} non-2xx of {run.requests}",
                    )
                }
            finally:
                procs.stop(proc)
        if "7" in scenarios:
            # Shadowing: the same GET workload through each proxy with mirroring off, to a
            # fast target and to one that answers after MIRROR_DELAY. The targets are a second
            # bench_backend process, so mirror traffic does not queue behind the primary's.
            mirror_backend = procs.start(
                [str(backend_bin), f"127.0.0.1:{MIRROR_TARGETS['fast']}", f"127.0.0.1:{MIRROR_TARGETS['slow']}@{MIRROR_DELAY}"],
                tmp / "mirror-backend.log",
                role="load",
            )
            try:
                for p in MIRROR_TARGETS.values():
                    wait_port(p)
                configs = []
                for kind in (*(["nginx"] if "nginx" in peers else []), "ficus"):
                    verb = "mirror" if kind == "nginx" else "shadow"
                    configs += [kind, f"{kind} {verb} fast", f"{kind} {verb} slow"]
                last_counts: dict[str, dict[str, int]] = {}

                def read_shadow(target: str, run: Run) -> None:
                    if target not in SHADOW_ADMIN:
                        return
                    counts = settled_shadow_counts(SHADOW_ADMIN[target])
                    before = last_counts.get(target, {})
                    run.shadow = {k: v - before.get(k, 0) for k, v in counts.items()}
                    last_counts[target] = counts

                scenario_wrk(
                    SHADOW_KEY,
                    "plain",
                    10,
                    configs,
                    "/api/orders/7",
                    [],
                    side_pids=(mirror_backend.pid,),
                    after_run=read_shadow,
                )
                for target, s in results[SHADOW_KEY].items():
                    if target in SHADOW_ADMIN:
                        s.note = shadow_note(s.runs)
                    elif target in SHADOW_PORTS:
                        s.note = "mirror target answers after " + MIRROR_DELAY if target.endswith("slow") else ""
                if "nginx" not in peers:
                    results[SHADOW_KEY]["ficus"].note = "nginx not installed: no mirror reference"
            finally:
                procs.stop(mirror_backend)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, seconds, repeats, args)
    return 0


SHADOW_OUTCOMES = ("match", "mismatch", "error", "timeout", "dropped", "skipped")


def shadow_counts(admin: int) -> dict[str, int]:
    """ficus_shadow_requests_total summed by outcome, from ficus's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    counts: dict[str, int] = {}
    for m in re.finditer(r"^ficus_shadow_requests_total\{([^}]*)\}\s+(\S+)", text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', m.group(1))
        if outcome:
            counts[outcome.group(1)] = counts.get(outcome.group(1), 0) + int(float(m.group(2)))
    return counts


def settled_shadow_counts(admin: int) -> dict[str, int]:
    """The counts once shadows still in flight after the run have ended (at most ~5 s)."""
    counts = shadow_counts(admin)
    for _ in range(20):
        time.sleep(0.25)
        again = shadow_counts(admin)
        if again == counts:
            break
        counts = again
    return counts


def shadow_note(runs: list[Run]) -> str:
    total: dict[str, int] = {}
    for run in runs:
        for k, v in (run.shadow or {}).items():
            total[k] = total.get(k, 0) + v
    order = [*SHADOW_OUTCOMES, *sorted(set(total) - set(SHADOW_OUTCOMES))]
    parts = [f"{k} {total[k]:,}" for k in order if total.get(k)]
    requests = sum(r.requests for r in runs)
    return f"shadow outcomes: {', '.join(parts) or 'none'} (of {requests:,} requests)"


def med(values: list[float]) -> float:
    # None (no CPU figure) and NaN are left out: one NaN would make the median meaningless.
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def report(results: dict[str, dict[str, Series]], seconds: float, repeats: int, args: argparse.Namespace) -> None:
    cpu = os.cpu_count()
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    print()
    print(f"Machine: {cpu} CPUs, {model}; wrk -t1 -c{args.connections}, {seconds:g}s per run, "
          f"{repeats} interleaved repeat(s); ficus --threads {args.threads}; medians shown."
          + (" Pinned: the proxy on CPU 0, wrk and the backends on CPU 1." if args.pin else ""))
    print()
    print("| scenario | target | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | errors | vs nginx | vs haproxy | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario, series in results.items():
        base = {k: med([r.rps for r in s.runs]) for k, s in series.items() if s.runs}
        for target, s in series.items():
            if s.runs:
                rps = med([r.rps for r in s.runs])
                p50 = med([r.p50_ms for r in s.runs])
                p99 = med([r.p99_ms for r in s.runs])
                cpu_us = med([r.cpu_us_per_req for r in s.runs])
                errors = sum(r.errors + r.non2xx for r in s.runs)
                other = max(r.busy_other for r in s.runs)
                flag = f" ⚠ other processes used {other:.0%} of the machine" if other > 0.05 else ""
                vs = []
                for peer in ("nginx", "haproxy"):
                    if peer in base and target != peer and target != "direct":
                        vs.append(f"{rps / base[peer]:.2f}x")
                    else:
                        vs.append("")
                print(f"| {scenario} | {target} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu_us:.1f} | "
                      f"{s.peak_rss_kib / 1024:.1f} | {errors} | {vs[0]} | {vs[1]} | {s.note}{flag} |")
            else:
                print(f"| {scenario} | {target} | | | | | {s.peak_rss_kib / 1024:.1f} | | | | {s.note} |")
    print()
    if "1. GET, 10 routes" in results:
        s = results["1. GET, 10 routes"]
        if "ficus" in s:
            for peer in ("nginx", "haproxy"):
                if peer in s:
                    ratios = [f.cpu_us_per_req / p.cpu_us_per_req for f, p in zip(s["ficus"].runs, s[peer].runs)]
                    print(f"Scenario 1 CPU per request, ficus / {peer}: median {med(ratios):.2f}x "
                          f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
            # Where the CPU goes: user mode (the proxy's own code) and system (sockets).
            split = []
            for target in ("nginx", "haproxy", "ficus"):
                runs = s.get(target)
                if runs and all(r.user_us_per_req is not None for r in runs.runs):
                    user = med([r.user_us_per_req for r in runs.runs])
                    total = med([r.cpu_us_per_req for r in runs.runs])
                    split.append(f"{target} {user:.1f} user + {total - user:.1f} system")
            if split:
                print(f"Scenario 1 CPU µs per request (medians): {'; '.join(split)}")
    if LARGE_KEY in results:
        s = results[LARGE_KEY]
        rps = [b.rps / a.rps for a, b in zip(s["ficus"].runs, s[LARGE_TABLE].runs)]
        cpu_ratio = [b.cpu_us_per_req / a.cpu_us_per_req for a, b in zip(s["ficus"].runs, s[LARGE_TABLE].runs)]
        met = med(rps) >= 0.95
        print(f"Scenario 2, 10,000 routes / 10 routes: throughput {med(rps):.2f}x, CPU per request "
              f"{med(cpu_ratio):.2f}x (per repeat: {', '.join(f'{r:.2f}/{c:.2f}' for r, c in zip(rps, cpu_ratio))}); "
              f"goal throughput >= 0.95x: {'met' if met else 'NOT met'}")
    if SHADOW_KEY in results:
        s = results[SHADOW_KEY]
        print(f"Scenario 7, each config / the same proxy with mirroring off (medians of per-repeat ratios; "
              f"slow target answers after {MIRROR_DELAY}):")
        for base, verb in (("ficus", "shadow"), ("nginx", "mirror")):
            if base not in s:
                print(f"  {base}: not run")
                continue
            for speed in ("fast", "slow"):
                name = f"{base} {verb} {speed}"
                rps = [c.rps / b.rps for c, b in zip(s[name].runs, s[base].runs)]
                p99 = [c.p99_ms / b.p99_ms for c, b in zip(s[name].runs, s[base].runs)]
                goal = ""
                if name == "ficus shadow slow":
                    met = med(rps) >= 0.9 and med(p99) <= 1.2
                    goal = f"; goal throughput >= 0.90x and p99 <= 1.20x: {'met' if met else 'NOT met'}"
                print(f"  {name} / {base}: throughput {med(rps):.2f}x, p99 {med(p99):.2f}x "
                      f"(per repeat: {', '.join(f'{r:.2f}/{q:.2f}' for r, q in zip(rps, p99))}){goal}")


if __name__ == "__main__":
    sys.exit(main())
