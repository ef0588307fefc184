"""The Flowboard load generator: every performance figure comes from here.

    python -m bench bandwidth [--duration 120] [--clients 20] [--rate 10]
    python -m bench quick                  # a <60 s cut of bandwidth
    python -m bench burst [--rate 500] [--duration 10]
    python -m bench capacity [--steps 250,500,1000,2000,5000] [--duration 15]
    python -m bench slow [--rate 50] [--duration 60]
    python -m bench soak [--rate 100] [--clients 200] [--duration 600]

Each run starts the real server (``python -m flowboard serve --port 0 --seed 42 ...``) as a
separate process, connects clients on loopback, prints a table and writes
``bench/results/<scenario>.json`` (machine, git commit, exact command line, parameters,
results). Full clients (``bench.load``) count wire bytes by kind, measure delivery latency
from each trade's ``ts_ms``, and decode v2 with ``ViewState``; a decoding client's view that
differs from ``/api/stats`` + ``/api/markets/hot`` at the same seq fails the run (exit 1).
Thousands of idle clients run in ``bench.mass`` subprocesses (bytes and frames only).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench.load import (
    Group,
    MeasuredClient,
    SlowClient,
    check_views,
    open_group,
    percentile,
    read_metrics,
    summarize_group,
    ws_base,
)
from bench.server import ServerProcess, machine, proc_usage

RESULTS = Path(__file__).parent / "results"


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Mass:
    """A ``bench.mass`` subprocess holding ``count`` cheap clients."""

    def __init__(self, url: str, count: int, *, deflate: bool) -> None:
        argv = [sys.executable, "-m", "bench.mass", url, str(count)] + (["--deflate"] if deflate else [])
        self.proc = subprocess.Popen(
            argv,
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_raise_nofile,
        )
        self.count = count
        self.connected_line = ""

    async def wait_connected(self) -> str:
        assert self.proc.stdout is not None
        self.connected_line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        return self.connected_line.strip()

    def cpu_s(self) -> float:
        return proc_usage(self.proc.pid)[0]

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(30)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": "no summary"}


def _set_measuring(clients: Sequence[MeasuredClient], on: bool) -> None:
    for client in clients:
        client.measuring = on


def _write(scenario: str, params: dict[str, Any], results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}.json"
    payload = {
        "benchmark": scenario,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "params": params,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


async def _sample_server(server: ServerProcess, every_s: float) -> None:
    while True:
        server.sample()
        await trio.sleep(every_s)


# -- bandwidth / quick -------------------------------------------------------------------------


async def bandwidth(args: argparse.Namespace) -> dict[str, Any]:
    groups = [
        Group("v1", deflate=False, clients=args.clients),
        Group("v1", deflate=True, clients=args.clients),
        Group("v2", deflate=False, clients=args.clients),
        Group("v2", deflate=True, clients=args.clients),
    ]
    server = ServerProcess(rate=args.rate)
    url = server.start()
    try:
        async with trio.open_nursery() as nursery:
            by_group = {g.name: await open_group(nursery, url, g) for g in groups}
            everyone = [c for clients in by_group.values() for c in clients]
            await trio.sleep(args.warmup)
            cpu0, self0, t0 = proc_usage(server.pid)[0], _self_cpu(), time.monotonic()
            _set_measuring(everyone, True)
            nursery.start_soon(_sample_server, server, 5.0)
            await trio.sleep(args.duration)
            _set_measuring(everyone, False)
            seconds = time.monotonic() - t0
            cpu1, self1 = proc_usage(server.pid)[0], _self_cpu()
            check = await check_views(url, [c for c in by_group["v2 deflate"] + by_group["v2 plain"]])
            metrics = await read_metrics(url)
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    summary = {name: summarize_group(clients, seconds) for name, clients in by_group.items()}
    ratio = {
        mode: summary[f"v2 {mode}"]["bytes_per_s_per_client"]
        / summary[f"v1 {mode}"]["bytes_per_s_per_client"]
        for mode in ("plain", "deflate")
    }
    rss = [s.rss_kib for s in server.samples]
    results = {
        "seconds": seconds,
        "groups": summary,
        "v2_over_v1_bytes": ratio,
        "view_check": check,
        "server": {
            "cpu_percent": 100 * (cpu1 - cpu0) / seconds,
            "rss_kib_max": max(rss) if rss else None,
            "errors_logged": server.errors_logged()[:5],
        },
        "load_generator_cpu_percent": 100 * (self1 - self0) / seconds,
        "server_metrics": {k: v for k, v in metrics.items() if "bytes_sent" in k or "frames_sent" in k},
        "targets": {
            "v2_plain_le_800_Bps": summary["v2 plain"]["bytes_per_s_per_client"] <= 800,
            "v2_deflate_le_300_Bps": summary["v2 deflate"]["bytes_per_s_per_client"] <= 300,
            "v2_snapshot_deflate_le_4KB": summary["v2 deflate"]["snapshot_wire_bytes"] <= 4096,
        },
    }
    kinds = sorted({k for s in summary.values() for k in s["bytes_per_s_per_client_by_kind"]})
    rows = []
    for name, s in summary.items():
        rows.append(
            [
                name,
                s["bytes_per_s_per_client"],
                s["frames_per_s_per_client"],
                s["snapshot_wire_bytes"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                *(s["bytes_per_s_per_client_by_kind"].get(k) for k in kinds),
            ]
        )
    print(
        _table(
            ["group", "B/s/client", "frames/s", "snapshot B", "lat p50 ms", "lat p99 ms", *kinds],
            rows,
        )
    )
    print(f"v2/v1 bytes: plain {ratio['plain']:.3f}, deflate {ratio['deflate']:.3f}")
    print(
        f"server CPU {results['server']['cpu_percent']:.1f}%  RSS max {results['server']['rss_kib_max']} KiB"
        f"  load generator CPU {results['load_generator_cpu_percent']:.1f}%"
    )
    print(f"view check: {check}")
    return results


# -- burst ---------------------------------------------------------------------------------------


async def burst(args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess(rate=args.rate)
    url = server.start()
    try:
        async with trio.open_nursery() as nursery:
            clients = await open_group(nursery, url, Group("v2", deflate=True, clients=args.clients))
            await trio.sleep(args.warmup)
            cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
            before = await read_metrics(url)
            _set_measuring(clients, True)
            await trio.sleep(args.duration)
            _set_measuring(clients, False)
            seconds = time.monotonic() - t0
            cpu1 = proc_usage(server.pid)[0]
            after = await read_metrics(url)
            check = await check_views(url, clients)
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    summary = summarize_group(clients, seconds)
    frames = statistics.median(sum(c.tally.frames_by_kind.values()) for c in clients)
    trades = summary["trades_per_client"]

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    results = {
        "seconds": seconds,
        "v2_deflate": summary,
        "frames_per_client": frames,
        "trades_per_client": trades,
        "trades_per_frame_mean": trades / frames if frames else None,
        "server_trades_ingested_per_s": delta("flowboard_trades_ingested_total") / seconds,
        "server_batched_frames": delta("flowboard_client_batched_frames_total"),
        "server_conflated_updates": delta("flowboard_client_conflated_updates_total"),
        "server_resyncs": delta("flowboard_client_resyncs_total"),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "view_check": check,
    }
    lat = summary["latency_ms"]
    print(
        _table(
            [
                "clients",
                "trades/client",
                "frames/client",
                "trades/frame",
                "p50 ms",
                "p99 ms",
                "max ms",
                "CPU %",
            ],
            [
                [
                    len(clients),
                    trades,
                    frames,
                    results["trades_per_frame_mean"],
                    lat["p50"],
                    lat["p99"],
                    lat["max"],
                    results["server_cpu_percent"],
                ]
            ],
        )
    )
    print(f"trades per frame (frames): {summary['trades_per_frame']}")
    ingested = results["server_trades_ingested_per_s"]
    print(f"trades ingested by the server: {ingested:.0f}/s (asked {args.rate:.0f}/s)")
    print(
        f"server: batched frames {results['server_batched_frames']:.0f}, conflated "
        f"{results['server_conflated_updates']:.0f}, resyncs {results['server_resyncs']:.0f};"
        f" view check {check}"
    )
    return results


# -- capacity --------------------------------------------------------------------------------------


async def capacity(args: argparse.Namespace) -> dict[str, Any]:
    steps = [int(s) for s in args.steps.split(",")]
    server = ServerProcess(rate=args.rate)
    url = server.start()
    masses: list[Mass] = []
    rows: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            await trio.sleep(2)
            base_rss = proc_usage(server.pid)[1]
            sample = await open_group(
                nursery, url, Group("v2", deflate=True, clients=min(args.sample, steps[0]), decode=False)
            )
            held = len(sample)
            for step in steps:
                if step > held:
                    mass = Mass(ws_base(url) + "/ws", step - held, deflate=True)
                    masses.append(mass)
                    connected = await mass.wait_connected()
                    held = step
                else:
                    connected = "-"
                await trio.sleep(args.settle)
                before = await read_metrics(url)
                for client in sample:
                    client.tally.latencies_ms.clear()
                cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
                mass_cpu0 = sum(m.cpu_s() for m in masses)
                self0 = _self_cpu()
                _set_measuring(sample, True)
                await trio.sleep(args.duration)
                _set_measuring(sample, False)
                seconds = time.monotonic() - t0
                cpu1, rss = proc_usage(server.pid)
                after = await read_metrics(url)
                latencies = [lat for c in sample for lat in c.tally.latencies_ms]
                p99 = percentile(latencies, 99)
                closed = after.get("flowboard_client_closed_slow_total", 0)
                row = {
                    "clients": step,
                    "connected": connected,
                    "server_clients_gauge": after.get("flowboard_clients"),
                    "p50_ms": percentile(latencies, 50),
                    "p99_ms": p99,
                    "max_ms": max(latencies) if latencies else None,
                    "latency_samples": len(latencies),
                    "closed_4008_total": closed,
                    "resyncs": after.get("flowboard_client_resyncs_total", 0)
                    - before.get("flowboard_client_resyncs_total", 0),
                    "batched_frames": after.get("flowboard_client_batched_frames_total", 0)
                    - before.get("flowboard_client_batched_frames_total", 0),
                    "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
                    "server_rss_kib": rss,
                    "rss_kib_per_client": (rss - base_rss) / step,
                    "mass_clients_cpu_percent": 100 * (sum(m.cpu_s() for m in masses) - mass_cpu0) / seconds,
                    "bench_cpu_percent": 100 * (_self_cpu() - self0) / seconds,
                    "sample_closed": sum(c.tally.closed is not None for c in sample),
                }
                row["ok"] = p99 is not None and p99 < 250 and closed == 0 and row["sample_closed"] == 0
                rows.append(row)
                print(
                    f"{step:>6} clients: p50 {_fmt(row['p50_ms'])} p99 {_fmt(p99)} ms, server CPU "
                    f"{row['server_cpu_percent']:.0f}%, RSS {rss / 1024:.0f} MiB "
                    f"({row['rss_kib_per_client']:.1f} KiB/client), closed {closed:.0f}, {connected}",
                    flush=True,
                )
                if not row["ok"] and not args.keep_going:
                    break
            nursery.cancel_scope.cancel()
    finally:
        mass_summaries = [m.finish() for m in masses]
        server.stop()
    passing = [r["clients"] for r in rows if r["ok"]]
    results = {
        "base_rss_kib": base_rss,
        "steps": rows,
        "largest_ok": max(passing) if passing else None,
        "mass_summaries": mass_summaries,
        "targets": {"capacity_ge_5000_p99_lt_250ms": 5000 in passing},
    }
    print(
        _table(
            ["clients", "p50 ms", "p99 ms", "max ms", "CPU %", "RSS MiB", "KiB/client", "closed", "ok"],
            [
                [
                    r["clients"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    r["server_cpu_percent"],
                    r["server_rss_kib"] / 1024,
                    r["rss_kib_per_client"],
                    r["closed_4008_total"],
                    r["ok"],
                ]
                for r in rows
            ],
        )
    )
    print(f"largest client count within p99 < 250 ms and no closes: {results['largest_ok']}")
    return results


# -- slow ----------------------------------------------------------------------------------------


async def _slow_phase(args: argparse.Namespace, with_slow: bool) -> dict[str, Any]:
    server = ServerProcess(rate=args.rate)
    url = server.start()
    mass = None
    slow: list[SlowClient] = []
    try:
        async with trio.open_nursery() as nursery:
            sample = await open_group(
                nursery, url, Group("v2", deflate=True, clients=args.sample, decode=False)
            )
            mass = Mass(ws_base(url) + "/ws", args.clients - args.sample, deflate=True)
            await mass.wait_connected()
            if with_slow:
                for index in range(args.slow):
                    client = SlowClient(ws_base(url) + "/ws", bytes_per_s=2048 if index % 2 == 0 else 0)
                    slow.append(client)
                    nursery.start_soon(client.run)
            await trio.sleep(args.warmup)
            nursery.start_soon(_sample_server, server, 2.0)
            _set_measuring(sample, True)
            await trio.sleep(args.duration)
            _set_measuring(sample, False)
            metrics = await read_metrics(url)
            nursery.cancel_scope.cancel()
    finally:
        mass_summary = mass.finish() if mass is not None else {}
        server.stop()
    latencies = [lat for c in sample for lat in c.tally.latencies_ms]
    rss = [(round(s.t, 1), s.rss_kib) for s in server.samples]
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "latency_samples": len(latencies),
        "rss_kib_over_time": rss,
        "slow_clients": [
            {
                "reads_bytes_per_s": c.bytes_per_s,
                "wire_bytes": c.wire_bytes,
                "messages": c.messages,
                "resync_frames_seen": c.resyncs,
                "closed": c.closed,
            }
            for c in slow
        ],
        "server_metrics": {
            k: v
            for k, v in metrics.items()
            if any(w in k for w in ("resyncs", "closed_slow", "batched", "conflated", "pending", "clients"))
        },
        "mass": mass_summary,
    }


async def slow(args: argparse.Namespace) -> dict[str, Any]:
    without = await _slow_phase(args, with_slow=False)
    with_slow = await _slow_phase(args, with_slow=True)
    ratio = (with_slow["p99_ms"] or 0) / (without["p99_ms"] or 1)
    rss = [kib for _, kib in with_slow["rss_kib_over_time"]]
    half = len(rss) // 2
    results = {
        "without_slow": without,
        "with_slow": with_slow,
        "p99_ratio": ratio,
        "rss_growth_second_half_kib": (rss[-1] - rss[half]) if rss else None,
        "targets": {"normal_p99_within_20_percent": ratio <= 1.2},
    }
    print(
        _table(
            ["run", "p50 ms", "p99 ms", "RSS start MiB", "RSS end MiB"],
            [
                [
                    name,
                    r["p50_ms"],
                    r["p99_ms"],
                    r["rss_kib_over_time"][0][1] / 1024,
                    r["rss_kib_over_time"][-1][1] / 1024,
                ]
                for name, r in (("without slow", without), ("with slow", with_slow))
            ],
        )
    )
    print(f"p99 with/without: {ratio:.2f}")
    for client in with_slow["slow_clients"]:
        print(f"  slow client: {client}")
    print(f"  server: {with_slow['server_metrics']}")
    return results


# -- soak ----------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess(rate=args.rate)
    url = server.start()
    mass = None
    try:
        async with trio.open_nursery() as nursery:
            sample = await open_group(nursery, url, Group("v2", deflate=True, clients=args.sample))
            mass = Mass(ws_base(url) + "/ws", args.clients - args.sample, deflate=True)
            await mass.wait_connected()
            nursery.start_soon(_sample_server, server, 10.0)
            cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
            _set_measuring(sample, True)
            await trio.sleep(args.duration)
            _set_measuring(sample, False)
            seconds = time.monotonic() - t0
            cpu1 = proc_usage(server.pid)[0]
            check = await check_views(url, sample)
            metrics = await read_metrics(url)
            nursery.cancel_scope.cancel()
    finally:
        mass_summary = mass.finish() if mass is not None else {}
        server.stop()
    summary = summarize_group(sample, seconds)
    rss = [(round(s.t), s.rss_kib) for s in server.samples]
    errors = server.errors_logged()
    results = {
        "seconds": seconds,
        "sample": summary,
        "mass": mass_summary,
        "rss_kib_over_time": rss,
        "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "view_check": check,
        "errors_logged": errors[:10],
        "closed_4008": metrics.get("flowboard_client_closed_slow_total", 0),
        "resyncs": metrics.get("flowboard_client_resyncs_total", 0),
        "ok": check.get("ok") and not errors and not summary["closed"] and not mass_summary.get("closed"),
    }
    print(_table(["t s", "RSS MiB"], [[t, kib / 1024] for t, kib in rss]))
    lat = summary["latency_ms"]
    print(
        f"sample p50 {_fmt(lat['p50'])} p99 {_fmt(lat['p99'])} ms;"
        f" server CPU {results['server_cpu_percent']:.0f}%;"
        f" closed {results['closed_4008']:.0f}, resyncs {results['resyncs']:.0f}; errors {len(errors)};"
        f" view check {check}"
    )
    return results


SCENARIOS = {
    "bandwidth": (bandwidth, {"duration": 120.0, "clients": 20, "rate": 10.0, "warmup": 5.0}),
    "quick": (bandwidth, {"duration": 25.0, "clients": 5, "rate": 10.0, "warmup": 3.0}),
    "burst": (burst, {"duration": 10.0, "clients": 20, "rate": 500.0, "warmup": 3.0}),
    "capacity": (capacity, {"duration": 15.0, "rate": 10.0, "settle": 5.0}),
    "slow": (slow, {"duration": 60.0, "clients": 200, "rate": 50.0, "warmup": 5.0}),
    "soak": (soak, {"duration": 600.0, "clients": 200, "rate": 100.0}),
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["scaleout"]:
        # One process versus ingest + edges: it starts its own servers and has its own options.
        from bench import scaleout

        scaleout.main(arguments[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*sorted(SCENARIOS), "scaleout"])
    parser.add_argument("--duration", type=float, help="seconds measured (per step for capacity)")
    parser.add_argument("--clients", type=int, help="clients (per group for bandwidth)")
    parser.add_argument("--rate", type=float, help="simulated trades per second")
    parser.add_argument("--warmup", type=float, help="seconds between connecting and measuring")
    parser.add_argument("--settle", type=float, help="capacity: seconds after each step before measuring")
    parser.add_argument("--steps", default="250,500,1000,2000,5000", help="capacity: client counts")
    parser.add_argument("--sample", type=int, default=50, help="full (latency-measuring) clients")
    parser.add_argument("--slow", type=int, default=10, help="slow: slow clients (half 2 KB/s, half stopped)")
    parser.add_argument("--keep-going", action="store_true", help="capacity: go on after a failing step")
    args = parser.parse_args(arguments)
    run, defaults = SCENARIOS[args.scenario]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.scenario == "soak":
        args.sample = min(args.sample, 10)
    _raise_nofile()
    params = {k: v for k, v in vars(args).items() if v is not None}
    results = trio.run(run, args)
    path = _write(args.scenario, params, results)
    print(f"wrote {path}")
    check = results.get("view_check")
    if check is not None and check.get("ok") is False:
        print("FAILED: a client's view differs from the server's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
