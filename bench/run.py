#!/usr/bin/env python3
"""Side-by-side benchmark: the backend direct, nginx, haproxy and ficus on one machine.

Everything runs on 127.0.0.1, every loop is bounded, and only the processes this
script started are stopped. See README.md ("Performance") for how to read the output.

    bench/run.sh            # full run (a few minutes)
    bench/run.sh --smoke    # a few seconds per config: checks the harness still works
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
NOFILE = 20000


# ---------------------------------------------------------------- processes


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))


class Procs:
    """The processes this run started; stopped (and only they) at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            args,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=raise_nofile,
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat (1-based), here 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def process_tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


# ---------------------------------------------------------------- configs


def nginx_conf(tmp: Path, port: int, scenario: str) -> Path:
    split = ""
    upstream = "backend"
    if scenario == "split":
        split = """
    upstream new { server 127.0.0.1:18081; keepalive 64; }
    split_clients "${http_x_user_id}" $pool { 30% new; * backend; }
"""
        upstream = "$pool"
    conf = tmp / f"nginx-{scenario}.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
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
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
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


def ficus_table(tmp: Path, port: int, scenario: str, routes: int, variant: int = 0) -> Path:
    lines = [
        'default = "legacy"',
        "[listen]",
        f'proxy = "127.0.0.1:{port}"',
        f'admin = "127.0.0.1:{FICUS_ADMIN}"',
        "[upstreams.legacy]",
        f'endpoints = ["http://127.0.0.1:{BACKEND_PORTS[0]}"]',
        "[upstreams.new]",
        f'endpoints = ["http://127.0.0.1:{BACKEND_PORTS[1]}"]',
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
    # A comment that differs per variant: scenario 6 alternates two tables.
    lines.append(f"# variant {variant}")
    path = tmp / "ficus" / "routes.toml"
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


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)
    peak_rss_kib: int = 0
    note: str = ""


def to_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, seconds: float, connections: int, extra: list[str], measured: list[int], all_pids: list[int]) -> Run:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", *extra, url]
    cpu_before = process_tree_cpu(measured)
    busy_before = machine_busy_seconds()
    ours_before = process_tree_cpu(all_pids)
    wrk_proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=raise_nofile)
    cpu_after = process_tree_cpu(measured)
    busy_after = machine_busy_seconds()
    ours_after = process_tree_cpu(all_pids)
    out = wrk_proc.stdout
    if "requests in" not in out:
        raise RuntimeError(f"wrk failed: {' '.join(cmd)}\n{out}\n{wrk_proc.stderr}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"99%\s+(\S+)", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    cpu = (cpu_after - cpu_before) * 1e6 / requests if measured and requests else None
    # CPU used by processes this script did not start (wrk included in ours via its own time).
    wall = seconds
    other = (busy_after - busy_before) - (ours_after - ours_before) - wrk_cpu_estimate(wrk_proc)
    return Run(rps, p50, p99, requests, errors, non2xx, cpu, max(0.0, other) / (wall * os.cpu_count()))


def wrk_cpu_estimate(_: subprocess.CompletedProcess) -> float:
    # wrk's own CPU time: children's rusage accumulates across runs, so take the delta.
    global _WRK_CHILD_CPU
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta = total - _WRK_CHILD_CPU
    _WRK_CHILD_CPU = total
    return delta


_WRK_CHILD_CPU = 0.0


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
    parser.add_argument("--scenarios", default="1,2,3,4,5,6")
    parser.add_argument("--no-build", action="store_true")
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
    busy = sorted({p for p in (*BACKEND_PORTS, *PORTS.values(), FICUS_ADMIN) if port_open(p)})
    if busy:
        print(f"ports already in use: {busy}; stop whatever listens there first", file=sys.stderr)
        return 2
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="ficus-bench-"))
    results: dict[str, dict[str, Series]] = {}
    try:
        backend = procs.start([str(backend_bin), *(f"127.0.0.1:{p}" for p in BACKEND_PORTS)], tmp / "backend.log")
        for p in BACKEND_PORTS:
            wait_port(p)

        def start_target(name: str, scenario: str, routes: int) -> subprocess.Popen | None:
            port = PORTS[name]
            if name == "direct":
                return None
            if name == "nginx":
                proc = procs.start([binaries["nginx"], "-c", str(nginx_conf(tmp, port, scenario)), "-p", str(tmp)], tmp / "nginx.log")
            elif name == "haproxy":
                proc = procs.start([binaries["haproxy"], "-db", "-f", str(haproxy_conf(tmp, port, scenario))], tmp / "haproxy.log")
            else:
                table = ficus_table(tmp, port, scenario, routes)
                proc = procs.start(
                    [str(ficus_bin), "--threads", str(args.threads), "serve", "--config", str(table)],
                    tmp / "ficus.log",
                    env={"RUST_LOG": "warn"},
                )
            wait_port(port)
            return proc

        def scenario_wrk(key: str, scenario: str, routes: int, targets: list[str], path: str, extra: list[str]) -> None:
            started = {t: start_target(t, scenario, routes) for t in targets}
            series = {t: Series() for t in targets}
            try:
                for _ in range(repeats):
                    for t in targets:
                        proc = started[t]
                        measured = [proc.pid] if proc else [backend.pid]
                        all_pids = [backend.pid] + [p.pid for p in started.values() if p]
                        run = wrk(f"http://127.0.0.1:{PORTS[t]}{path}", seconds, args.connections, extra, measured, all_pids)
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
            scenario_wrk("2. GET, 10,000 routes", "plain", 10_000, ["ficus"], "/api/orders/7", [])
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
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    report(results, seconds, repeats, args)
    return 0


def med(values: list[float]) -> float:
    values = [v for v in values if v is not None]
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
          f"{repeats} interleaved repeat(s); ficus --threads {args.threads}; medians shown.")
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


if __name__ == "__main__":
    sys.exit(main())
