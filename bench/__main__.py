"""The Flowboard load generator: every performance figure comes from here.

    python -m bench bandwidth [--duration 120] [--clients 20] [--rate 10]
    python -m bench quick                  # a <60 s cut of bandwidth
    python -m bench burst [--rate 500] [--duration 10]
    python -m bench cost [--clients 1000] [--rate 10] [--repeat 3] [--other PATH]
    python -m bench capacity [--steps 500,1000,2000,3000,4000,5000,6000] [--duration 15] [--repeat 3]
    python -m bench overload [--clients 10000] [--rate 10] [--duration 30]
    python -m bench slow [--clients 500] [--rate 10] [--duration 30] [--repeat 3]
    python -m bench soak [--rate 100] [--clients 200] [--minutes 30] [--role edge]
    python -m bench scaleout [--rate 50] [--steps ...]     # its own options, see bench/scaleout.py

Each run starts the real server (``python -m flowboard serve --port 0 --seed 42 ...``) as a
separate process, connects clients on loopback, prints a table and writes
``bench/results/<scenario>.json`` (machine, git commit, exact command line, parameters,
results). Full clients (``bench.load``) count wire bytes by kind, measure delivery latency
from each trade's ``ts_ms``, and decode v2 with ``ViewState``; a decoding client's view that
differs from ``/api/stats`` + ``/api/markets/hot`` at the same seq fails the run (exit 1).
Thousands of clients that only count frames run in ``bench.mass`` subprocesses (``--procs``,
frame headers parsed, nothing inflated); their own CPU per frame is reported next to the
server's. ``cost`` compares the server with a peer on the ``websockets`` library
(``bench.peer``); capacity, overload and scaleout read the server's event-loop lag
(``flowboard_loop_lag_seconds``) from ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench.load import (
    Group,
    MeasuredClient,
    SlowClient,
    check_views,
    histogram_quantile,
    open_group,
    percentile,
    read_metrics,
    summarize_group,
    ws_base,
)
from bench.mass import Mass
from bench.server import PeerProcess, ServerProcess, git_commit, machine, proc_usage
from flowboard.testing.wsclient import open_wire_client

SOAK_REDIS_URL = os.environ.get("FLOWBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

RESULTS = Path(__file__).parent / "results"


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


# -- cost ----------------------------------------------------------------------------------------

LOOP_LAG = "flowboard_loop_lag_seconds"
COALESCE = "flowboard_coalesce_interval_seconds"


def _loop_lag(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The server's event-loop lag between two /metrics reads (or that it does not export it)."""
    if not any(key.startswith(LOOP_LAG) for key in after):
        return {"exported": False}
    p50, p99 = (histogram_quantile(before, after, LOOP_LAG, q) for q in (0.5, 0.99))
    return {
        "exported": True,
        "p50_ms": None if p50 is None else 1000 * p50,
        "p99_ms": None if p99 is None else 1000 * p99,
        "coalesce_interval_s": after.get(COALESCE),
    }


def _lag_text(lag: dict[str, Any]) -> str:
    if not lag.get("exported"):
        return "loop lag not exported"
    interval = lag.get("coalesce_interval_s")
    coalesce = "not exported" if interval is None else f"{interval * 1000:.0f} ms"
    return f"loop lag p99 {_fmt(lag['p99_ms'])} ms (bucket bound), coalescing interval {coalesce}"


async def _record_frames(url: str, path: Path, until: trio.Event) -> None:
    """Writes the v2 frames one plain client gets (the snapshot left out) until ``until`` is set."""
    client = await open_wire_client(url, deflate=False)
    frames = []
    with trio.move_on_after(600):
        async with trio.open_nursery() as nursery:

            async def stop() -> None:
                await until.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop)
            await client.receive()
            while True:
                frames.append((await client.receive()).text)
    await client.aclose()
    await trio.Path(path).write_text("\n".join(frames) + "\n")


async def _cost_one(
    args: argparse.Namespace,
    server: ServerProcess | PeerProcess,
    path: str,
    deflate: bool,
    record: Path | None,
) -> dict[str, Any]:
    """Server CPU per frame the counting clients received, in one server process started here."""
    url = server.start()
    endpoint = path.rpartition(" ")[2]
    ws_url = (ws_base(url) + endpoint) if isinstance(server, ServerProcess) else url
    mass: Mass | None = None
    try:
        await trio.sleep(2)
        idle0, t_idle = proc_usage(server.pid)[0], time.monotonic()
        await trio.sleep(3)
        idle1, rss0 = proc_usage(server.pid)
        idle_cpu_per_s = (idle1 - idle0) / (time.monotonic() - t_idle)
        mass = Mass(ws_url, args.clients, deflate=deflate, procs=args.procs)
        connected = await trio.to_thread.run_sync(mass.wait_connected)
        await trio.sleep(args.settle)
        recorded = trio.Event()
        async with trio.open_nursery() as nursery:
            if record is not None:
                nursery.start_soon(_record_frames, ws_url, record, recorded)
            report0 = await trio.to_thread.run_sync(mass.report)
            cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
            await trio.sleep(args.duration)
            report1 = await trio.to_thread.run_sync(mass.report)
            cpu1, rss1 = proc_usage(server.pid)
            seconds = time.monotonic() - t0
            recorded.set()
    finally:
        summary = mass.finish() if mass is not None else {}
        server.stop()
    frames = report1["messages_total"] - report0["messages_total"]
    cpu = cpu1 - cpu0
    return {
        "path": path,
        "deflate": deflate,
        "connected": connected,
        "seconds": seconds,
        "frames": frames,
        "frames_per_s_per_client": frames / seconds / args.clients,
        "wire_bytes_per_frame": (report1["bytes_total"] - report0["bytes_total"]) / frames
        if frames
        else None,
        "server_cpu_percent": 100 * cpu / seconds,
        "server_us_per_frame": 1e6 * cpu / frames if frames else None,
        # Per client per second too: a server that coalesces sends fewer, larger frames.
        "server_us_per_client_s": 1e6 * cpu / seconds / args.clients,
        "server_us_per_frame_net_of_idle": 1e6 * (cpu - idle_cpu_per_s * seconds) / frames
        if frames
        else None,
        "generator_us_per_frame": 1e6 * (report1["cpu_s"] - report0["cpu_s"]) / frames if frames else None,
        "rss_kib_per_client": (rss1 - rss0) / args.clients,
        "closed": summary.get("closed"),
        "lost": summary.get("lost"),
    }


async def cost(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="flowboard-cost-") as tmp:
        frames_file = Path(tmp) / "frames.txt"
        for repeat in range(args.repeat):
            rows = []
            for path in args.paths.split(","):
                for deflate in (True, False):
                    record = frames_file if (path, deflate, repeat) == ("/ws", True, 0) else None
                    row = await _cost_one(args, ServerProcess(rate=args.rate), path, deflate, record)
                    rows.append(row)
                    _print_cost_row(f"flowboard {path}", row)
            if args.other is not None:
                for deflate in (True, False):
                    server = ServerProcess(rate=args.rate, root=args.other)
                    row = await _cost_one(args, server, "other /ws", deflate, None)
                    rows.append(row)
                    _print_cost_row(f"{args.other} /ws", row)
            # The peer sends what /ws delivered: the recorded frames, at /ws's frames per client per second.
            ws_rate = statistics.median(
                r["frames_per_s_per_client"] for r in rows if r["path"] == "/ws" and r["deflate"]
            )
            for deflate in (True, False):
                peer = PeerProcess(frames_file, frames_per_s=ws_rate)
                row = await _cost_one(args, peer, "peer", deflate, None)
                rows.append(row)
                _print_cost_row("websockets broadcast()", row)
            runs.append(rows)

    def median_of(path: str, deflate: bool, key: str) -> float | None:
        values = [r[key] for rows in runs for r in rows if r["path"] == path and r["deflate"] == deflate]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    keys = (
        "server_us_per_frame",
        "server_us_per_client_s",
        "server_us_per_frame_net_of_idle",
        "generator_us_per_frame",
        "rss_kib_per_client",
        "frames_per_s_per_client",
        "wire_bytes_per_frame",
        "server_cpu_percent",
    )
    medians = {
        f"{path} {'deflate' if deflate else 'plain'}": {key: median_of(path, deflate, key) for key in keys}
        for path in (*args.paths.split(","), "peer", *(["other /ws"] if args.other is not None else []))
        for deflate in (True, False)
    }
    ratio = {
        mode: (medians[f"/ws {mode}"]["server_us_per_frame"] or 0)
        / (medians[f"peer {mode}"]["server_us_per_frame"] or 1)
        for mode in ("deflate", "plain")
    }
    generator_below_server = all(
        (m["generator_us_per_frame"] or 0) < (m["server_us_per_frame"] or 0) for m in medians.values()
    )
    if args.other is not None:
        ratio["other_over_this_deflate"] = (medians["other /ws deflate"]["server_us_per_frame"] or 0) / (
            medians["/ws deflate"]["server_us_per_frame"] or 1
        )
    results = {
        "other_checkout": None
        if args.other is None
        else {"path": str(args.other), "git_commit": git_commit(args.other)},
        "runs": runs,
        "medians": medians,
        "ws_over_peer_cpu_per_frame": ratio,
        "targets": {
            "ws_deflate_le_10_us": (medians["/ws deflate"]["server_us_per_frame"] or 1e9) <= 10,
            "ws_plain_le_5_us": (medians["/ws plain"]["server_us_per_frame"] or 1e9) <= 5,
            "ws_below_peer": ratio["deflate"] < 1 and ratio["plain"] < 1,
            "generator_cheaper_than_server": generator_below_server,
        },
    }
    print(f"\nmedians of {args.repeat} run(s), {args.clients} clients, {args.rate:g} trades/s:")
    print(
        _table(
            [
                "server",
                "µs/frame",
                "net of idle",
                "generator µs/frame",
                "µs/client/s",
                "RSS KiB/client",
                "frames/s/client",
                "B/frame",
            ],
            [
                [
                    name,
                    m["server_us_per_frame"],
                    m["server_us_per_frame_net_of_idle"],
                    m["generator_us_per_frame"],
                    m["server_us_per_client_s"],
                    m["rss_kib_per_client"],
                    m["frames_per_s_per_client"],
                    m["wire_bytes_per_frame"],
                ]
                for name, m in medians.items()
            ],
        )
    )
    print(f"/ws over the peer, CPU per frame: deflate {ratio['deflate']:.2f}, plain {ratio['plain']:.2f}")
    if args.other is not None:
        print(f"other /ws ({args.other}) over this /ws, deflate: {ratio['other_over_this_deflate']:.2f}")
    print(f"targets: {results['targets']}")
    return results


def _print_cost_row(name: str, row: dict[str, Any]) -> None:
    mode = "deflate" if row["deflate"] else "plain"
    print(
        f"{name} {mode}: {_fmt(row['server_us_per_frame'])} µs/frame (net of idle"
        f" {_fmt(row['server_us_per_frame_net_of_idle'])}), generator {_fmt(row['generator_us_per_frame'])}"
        f" µs/frame, {_fmt(row['frames_per_s_per_client'], 2)} frames/s/client,"
        f" {_fmt(row['rss_kib_per_client'])} KiB/client, CPU {row['server_cpu_percent']:.0f}%;"
        f" {row['connected']}; closed {row['closed']} lost {row['lost']}",
        flush=True,
    )


# -- capacity --------------------------------------------------------------------------------------


async def _capacity_run(args: argparse.Namespace) -> list[dict[str, Any]]:
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
                connected = "-"
                if step > held:
                    mass = Mass(ws_base(url) + "/ws", step - held, deflate=True, procs=args.procs)
                    masses.append(mass)
                    connected = await trio.to_thread.run_sync(mass.wait_connected)
                    held = step
                await trio.sleep(args.settle)
                before = await read_metrics(url)
                for client in sample:
                    client.tally.latencies_ms.clear()
                reports0 = [await trio.to_thread.run_sync(m.report) for m in masses]
                cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
                _set_measuring(sample, True)
                await trio.sleep(args.duration)
                _set_measuring(sample, False)
                seconds = time.monotonic() - t0
                cpu1, rss = proc_usage(server.pid)
                reports1 = [await trio.to_thread.run_sync(m.report) for m in masses]
                after = await read_metrics(url)
                frames = sum(
                    b["messages_total"] - a["messages_total"] for a, b in zip(reports0, reports1, strict=True)
                )
                generator_cpu = sum(b["cpu_s"] - a["cpu_s"] for a, b in zip(reports0, reports1, strict=True))
                latencies = [lat for c in sample for lat in c.tally.latencies_ms]
                p99 = percentile(latencies, 99)
                closed = after.get("flowboard_client_closed_slow_total", 0)
                mass_closed = sum(sum(r["closed"].values()) + r["lost"] for r in reports1)
                row = {
                    "clients": step,
                    "connected": connected,
                    "server_clients_gauge": after.get("flowboard_clients"),
                    "p50_ms": percentile(latencies, 50),
                    "p99_ms": p99,
                    "max_ms": max(latencies) if latencies else None,
                    "latency_samples": len(latencies),
                    "closed_4008_total": closed,
                    "counting_clients_closed_or_lost": mass_closed,
                    "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
                    "server_us_per_frame": 1e6 * (cpu1 - cpu0) / frames if frames else None,
                    "generator_cpu_percent": 100 * generator_cpu / seconds,
                    "generator_us_per_frame": 1e6 * generator_cpu / frames if frames else None,
                    "frames_per_s_counted": frames / seconds,
                    "server_rss_kib": rss,
                    "rss_kib_per_client": (rss - base_rss) / step,
                    "sample_closed": sum(c.tally.closed is not None for c in sample),
                    "loop_lag": _loop_lag(before, after),
                }
                row["ok"] = (
                    p99 is not None
                    and p99 <= 250
                    and closed == 0
                    and mass_closed == 0
                    and row["sample_closed"] == 0
                )
                rows.append(row)
                print(
                    f"{step:>6} clients: p50 {_fmt(row['p50_ms'])} p99 {_fmt(p99)} ms, server CPU "
                    f"{row['server_cpu_percent']:.0f}% ({_fmt(row['server_us_per_frame'])} µs/frame),"
                    " generator"
                    f" {_fmt(row['generator_us_per_frame'])} µs/frame, RSS {rss / 1024:.0f} MiB "
                    f"({row['rss_kib_per_client']:.1f} KiB/client), closed {closed:.0f}+{mass_closed};"
                    f" {_lag_text(row['loop_lag'])}; {connected}",
                    flush=True,
                )
                if not row["ok"] and not args.keep_going:
                    break
            nursery.cancel_scope.cancel()
    finally:
        for mass in masses:
            mass.finish()
        server.stop()
    return rows


async def capacity(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for repeat in range(args.repeat):
        if args.repeat > 1:
            print(f"run {repeat + 1} of {args.repeat}", flush=True)
        runs.append(await _capacity_run(args))
    held_per_run = [max((r["clients"] for r in rows if r["ok"]), default=None) for rows in runs]
    steps = [int(s) for s in args.steps.split(",")]
    held_in_all = [
        step for step in steps if all(any(r["clients"] == step and r["ok"] for r in rows) for rows in runs)
    ]
    largest_all = max(held_in_all, default=None)
    results = {
        "runs": runs,
        "steps": runs[-1],
        "largest_ok_per_run": held_per_run,
        "largest_ok": largest_all,
        "targets": {
            "capacity_ge_5000_p99_le_250ms_all_runs": largest_all is not None and largest_all >= 5000
        },
    }
    for index, rows in enumerate(runs):
        print(f"run {index + 1}:")
        print(
            _table(
                [
                    "clients",
                    "p50 ms",
                    "p99 ms",
                    "CPU %",
                    "µs/frame",
                    "gen µs/frame",
                    "KiB/client",
                    "lag p99",
                    "ok",
                ],
                [
                    [
                        r["clients"],
                        r["p50_ms"],
                        r["p99_ms"],
                        r["server_cpu_percent"],
                        r["server_us_per_frame"],
                        r["generator_us_per_frame"],
                        r["rss_kib_per_client"],
                        r["loop_lag"].get("p99_ms", "n/a"),
                        "yes" if r["ok"] else "no",
                    ]
                    for r in rows
                ],
            )
        )
    print(
        f"largest step within p99 250 ms, no client closed: per run {held_per_run};"
        f" in {args.repeat} of {args.repeat} runs: {largest_all}"
    )
    return results


# -- overload -------------------------------------------------------------------------------------


async def overload(args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess(rate=args.rate)
    url = server.start()
    mass: Mass | None = None
    lag_over_time: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            await trio.sleep(2)
            sample = await open_group(nursery, url, Group("v2", deflate=True, clients=args.sample))
            mass = Mass(ws_base(url) + "/ws", args.clients - args.sample, deflate=True, procs=args.procs)
            connected = await trio.to_thread.run_sync(mass.wait_connected)
            print(f"{args.clients} clients: {connected}", flush=True)
            await trio.sleep(args.warmup)
            first = before = await read_metrics(url)
            report0 = await trio.to_thread.run_sync(mass.report)
            cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
            _set_measuring(sample, True)
            while time.monotonic() - t0 < args.duration:
                await trio.sleep(min(5.0, args.duration - (time.monotonic() - t0)))
                now = await read_metrics(url)
                lag = _loop_lag(before, now) | {"t_s": round(time.monotonic() - t0, 1)}
                lag_over_time.append(lag)
                print(f"  t={lag['t_s']} s: {_lag_text(lag)}", flush=True)
                before = now
            _set_measuring(sample, False)
            seconds = time.monotonic() - t0
            cpu1 = proc_usage(server.pid)[0]
            report1 = await trio.to_thread.run_sync(mass.report)
            last = await read_metrics(url)
            # The view check needs every measuring client at the server's seq at one moment: under
            # overload their lags differ by seconds, so the load is taken away first and they catch up.
            summary_mass = await trio.to_thread.run_sync(mass.finish)
            mass = None
            await trio.sleep(args.warmup)
            check = await check_views(url, sample, attempts=60)
            nursery.cancel_scope.cancel()
    finally:
        if mass is not None:
            summary_mass = mass.finish()
        server.stop()
    summary = summarize_group(sample, seconds)
    closed = {
        "server_4008": last.get("flowboard_client_closed_slow_total", 0),
        "counting_clients": summary_mass.get("closed"),
        "counting_clients_lost": summary_mass.get("lost"),
        "measuring_clients": summary["closed"],
    }
    closed_total = (
        closed["server_4008"]
        + sum((closed["counting_clients"] or {}).values())
        + (closed["counting_clients_lost"] or 0)
        + sum(closed["measuring_clients"].values())
    )
    frames = report1["messages_total"] - report0["messages_total"]
    lag = _loop_lag(first, last)
    histogram = {k: v - first.get(k, 0.0) for k, v in last.items() if k.startswith(LOOP_LAG)}
    lat = summary["latency_ms"]
    results = {
        "seconds": seconds,
        "clients": args.clients,
        "rate": args.rate,
        "sample": summary,
        "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "server_us_per_frame": 1e6 * (cpu1 - cpu0) / frames if frames else None,
        "frames_per_s_per_counting_client": frames / seconds / max(1, args.clients - args.sample),
        "closed": closed,
        "closed_total": closed_total,
        "view_check": check,
        "loop_lag": lag,
        "loop_lag_histogram_delta": histogram,
        "loop_lag_over_time": lag_over_time,
        "targets": {
            "p99_le_1s": lat["p99"] is not None and lat["p99"] <= 1000,
            "no_client_closed": closed_total == 0,
            "nothing_lost": check.get("ok") is True,
            "loop_lag_p99_le_20ms": lag.get("p99_ms") is not None and lag["p99_ms"] <= 20,
        },
    }
    print(
        f"overload: {args.clients} clients at {args.rate:g} trades/s:"
        f" p50 {_fmt(lat['p50'])} p99 {_fmt(lat['p99'])} ms,"
        f" server CPU {results['server_cpu_percent']:.0f}%"
        f" ({_fmt(results['server_us_per_frame'])} µs/frame),"
        f" {results['frames_per_s_per_counting_client']:.2f} frames/s per counting client"
    )
    print(f"clients closed: {closed_total:.0f} {closed}; view check {check}")
    print(f"whole run: {_lag_text(lag)}")
    if histogram:
        print(
            "loop lag histogram (observations in the run): "
            + ", ".join(f"{k}={v:.0f}" for k, v in histogram.items())
        )
    print(f"targets: {results['targets']}")
    return results


# -- slow ----------------------------------------------------------------------------------------


async def _slow_phase(
    args: argparse.Namespace, url: str, server: ServerProcess, sample: list[MeasuredClient]
) -> dict[str, Any]:
    for client in sample:
        client.tally.latencies_ms.clear()
    cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
    _set_measuring(sample, True)
    await trio.sleep(args.duration)
    _set_measuring(sample, False)
    seconds = time.monotonic() - t0
    cpu1, rss = proc_usage(server.pid)
    latencies = [lat for c in sample for lat in c.tally.latencies_ms]
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "latency_samples": len(latencies),
        "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "server_rss_kib": rss,
    }


async def _slow_run(args: argparse.Namespace) -> dict[str, Any]:
    """One server: the normal clients' latency without slow clients, then with them."""
    server = ServerProcess(rate=args.rate)
    url = server.start()
    mass: Mass | None = None
    slow_clients: list[SlowClient] = []
    try:
        async with trio.open_nursery() as nursery:
            sample = await open_group(
                nursery, url, Group("v2", deflate=True, clients=args.sample, decode=False)
            )
            mass = Mass(ws_base(url) + "/ws", args.clients - args.sample, deflate=True, procs=args.procs)
            await trio.to_thread.run_sync(mass.wait_connected)
            await trio.sleep(args.warmup)
            without = await _slow_phase(args, url, server, sample)
            for index in range(args.slow):
                client = SlowClient(ws_base(url) + "/ws", bytes_per_s=2048 if index % 2 == 0 else 0)
                slow_clients.append(client)
                nursery.start_soon(client.run)
            await trio.sleep(args.warmup)
            with_slow = await _slow_phase(args, url, server, sample)
            metrics = await read_metrics(url)
            nursery.cancel_scope.cancel()
    finally:
        mass_summary = mass.finish() if mass is not None else {}
        server.stop()
    ratio = (with_slow["p99_ms"] or 0) / (without["p99_ms"] or 1)
    row = {
        "without_slow": without,
        "with_slow": with_slow,
        "p99_ratio": ratio,
        "slow_clients": [
            {
                "reads_bytes_per_s": c.bytes_per_s,
                "wire_bytes": c.wire_bytes,
                "messages": c.messages,
                "resync_frames_seen": c.resyncs,
                "closed": c.closed,
            }
            for c in slow_clients
        ],
        "server_metrics": {
            k: v
            for k, v in metrics.items()
            if any(w in k for w in ("resyncs", "closed_slow", "batched", "conflated", "pending", "clients"))
        },
        "counting_clients": mass_summary,
    }
    print(
        f"without slow: p99 {_fmt(without['p99_ms'])} ms (CPU {without['server_cpu_percent']:.0f}%),"
        f" with {args.slow} slow: p99 {_fmt(with_slow['p99_ms'])} ms"
        f" (CPU {with_slow['server_cpu_percent']:.0f}%);"
        f" ratio {ratio:.2f}",
        flush=True,
    )
    return row


async def slow(args: argparse.Namespace) -> dict[str, Any]:
    runs = [await _slow_run(args) for _ in range(args.repeat)]
    ratios = [r["p99_ratio"] for r in runs]
    cpu = [r[phase]["server_cpu_percent"] for r in runs for phase in ("without_slow", "with_slow")]
    within = sum(ratio <= 1.2 for ratio in ratios)
    results = {
        "runs": runs,
        "p99_ratios": ratios,
        "server_cpu_percent_max": max(cpu),
        "targets": {
            "ratio_le_1_2_all_runs": within == len(runs),
            "server_at_most_half_a_core": max(cpu) <= 50,
        },
    }
    print(
        _table(
            ["run", "p99 without ms", "p99 with ms", "ratio", "CPU % without", "CPU % with"],
            [
                [
                    index + 1,
                    r["without_slow"]["p99_ms"],
                    r["with_slow"]["p99_ms"],
                    r["p99_ratio"],
                    r["without_slow"]["server_cpu_percent"],
                    r["with_slow"]["server_cpu_percent"],
                ]
                for index, r in enumerate(runs)
            ],
        )
    )
    print(f"ratio <= 1.2 in {within} of {len(runs)} runs; server CPU at most {max(cpu):.0f}% of a core")
    for client in runs[-1]["slow_clients"]:
        print(f"  slow client: {client}")
    print(f"  server: {runs[-1]['server_metrics']}")
    return results


# -- soak ----------------------------------------------------------------------------------------

#: The window is full from the start (the simulator's warm start backdates it), but buffers,
#: rings and the allocator settle for a while: growth is measured after this minute.
SOAK_SETTLED_S = 15 * 60
SOAK_SAMPLE_S = 60.0


def rss_slope_mib_per_hour(samples: Sequence[tuple[float, int]], after_s: float) -> float | None:
    """Least-squares slope of (seconds, RSS KiB) samples taken at or after ``after_s``."""
    points = [(t, kib / 1024) for t, kib in samples if t >= after_s]
    if len(points) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_m = statistics.fmean(m for _, m in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 3600 * sum((t - mean_t) * (m - mean_m) for t, m in points) / spread


def aggregator_bytes_per_window_trade(rate: float) -> dict[str, float]:
    """Resident memory the aggregator takes in this process, fed the seeded simulator at
    ``rate`` for 20 minutes of trade time (the trades made as they come, so they are counted
    too): per in-window trade, the marginal cost of a window twice as long, where the fixed
    parts (per-market histories, tape, buckets) cancel out, and all of it per in-window trade."""
    import gc

    from flowboard.aggregate.aggregator import Aggregator
    from flowboard.ingest.simulator import Simulator

    start_ms = 1_767_225_600_000  # 2026-01-01 00:00 UTC
    end_ms = start_ms + 20 * 60_000
    held: dict[int, tuple[int, int]] = {}
    # Both kept until the end: memory freed by the first would be reused by the second.
    aggregators = []
    for window_ms in (300_000, 600_000):
        sim = Simulator(seed=42, rate=rate, start_ms=start_ms)
        gc.collect()
        before = proc_usage(os.getpid())[1]
        agg = Aggregator(window_ms=window_ms)
        at_ms, trade = sim.next_trade(start_ms)
        while at_ms < end_ms:
            agg.add_trade(trade, at_ms)
            at_ms, trade = sim.next_trade(at_ms)
        agg.advance(end_ms)
        gc.collect()
        held[window_ms] = (1024 * (proc_usage(os.getpid())[1] - before), agg.statistics().trades_in_window)
        aggregators.append(agg)
    del aggregators
    (short_bytes, short_trades), (long_bytes, long_trades) = held[300_000], held[600_000]
    return {
        "window_trades": long_trades,
        "aggregator_rss_bytes": long_bytes,
        "bytes_per_window_trade_marginal": (long_bytes - short_bytes) / (long_trades - short_trades),
        "bytes_per_window_trade_all_state": long_bytes / long_trades,
    }


def _soak_servers(args: argparse.Namespace) -> tuple[ServerProcess, ServerProcess | None]:
    """The process the clients use, and for ``--role edge`` the ingest that feeds it."""
    if args.role != "edge":
        server = ServerProcess(rate=args.rate)
        if args.tracemalloc is not None:
            server.argv[1:3] = ["-m", "bench.tracemalloc_serve", str(args.tracemalloc)]
        return server, None
    redis = ["--redis", SOAK_REDIS_URL, "--redis-prefix", f"soak-{uuid.uuid4().hex}"]
    ingest = ServerProcess(rate=args.rate, extra=["--role", "ingest", *redis])
    db = ingest.argv[ingest.argv.index("--db") + 1]
    # The edge reads the ingest's store (market history) and serves the clients.
    return ServerProcess(rate=args.rate, extra=["--role", "edge", *redis, "--db", db]), ingest


#: ``--tracemalloc``: tracing starts once start-up is over, the first snapshot comes a minute
#: later, then one every ten minutes, so that two differences show whether a growth goes on.
SOAK_TRACE_FROM_S = 4 * 60
SOAK_SNAPSHOT_FIRST_S = 5 * 60
SOAK_SNAPSHOT_EVERY_S = 10 * 60


async def _snapshot_server(server: ServerProcess, started: float) -> None:
    """Asks a server run by ``bench.tracemalloc_serve`` to start tracing at minute 4, and for a
    snapshot at minute 5, 15, 25, ..."""
    due = SOAK_TRACE_FROM_S
    while True:
        await trio.sleep(max(0.0, started + due - time.monotonic()))
        os.kill(server.pid, signal.SIGUSR1)
        print(f"tracemalloc signalled at minute {due / 60:.0f}", flush=True)
        due = SOAK_SNAPSHOT_FIRST_S if due == SOAK_TRACE_FROM_S else due + SOAK_SNAPSHOT_EVERY_S


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    if args.minutes is not None:
        args.duration = args.minutes * 60
    heap = aggregator_bytes_per_window_trade(args.rate)
    server, ingest = _soak_servers(args)
    mass = None
    try:
        if ingest is not None:
            ingest.start()
        started = time.monotonic()
        url = server.start()
        rss_before_clients_kib = proc_usage(server.pid)[1]
        async with trio.open_nursery() as nursery:
            sample = await open_group(nursery, url, Group("v2", deflate=True, clients=args.sample))
            mass = Mass(ws_base(url) + "/ws", args.clients - args.sample, deflate=True, procs=args.procs)
            await trio.to_thread.run_sync(mass.wait_connected)
            await trio.sleep(SOAK_SAMPLE_S)
            rss_with_clients_kib = proc_usage(server.pid)[1]
            nursery.start_soon(_sample_server, server, SOAK_SAMPLE_S)
            if ingest is not None:
                nursery.start_soon(_sample_server, ingest, SOAK_SAMPLE_S)
            if args.tracemalloc is not None:
                nursery.start_soon(_snapshot_server, server, started)
            cpu0, t0 = proc_usage(server.pid)[0], time.monotonic()
            _set_measuring(sample, True)
            await trio.sleep(max(0.0, args.duration - (time.monotonic() - started)))
            _set_measuring(sample, False)
            seconds = time.monotonic() - t0
            cpu1 = proc_usage(server.pid)[0]
            check = await check_views(url, sample)
            metrics = await read_metrics(url)
            nursery.cancel_scope.cancel()
    finally:
        mass_summary = mass.finish() if mass is not None else {}
        server.stop()
        if ingest is not None:
            ingest.stop()
    summary = summarize_group(sample, seconds)
    rss = [(round(s.t), s.rss_kib) for s in server.samples]
    errors = server.errors_logged() + (ingest.errors_logged() if ingest is not None else [])
    settled = [kib for t, kib in rss if t >= SOAK_SETTLED_S]
    results = {
        "role": args.role,
        "seconds": seconds,
        "sample": summary,
        "mass": mass_summary,
        "rss_kib_over_time": rss,
        "rss_slope_mib_per_hour_after_15_min": rss_slope_mib_per_hour(rss, SOAK_SETTLED_S),
        "rss_slope_target_mib_per_hour": 1.0,
        "steady_rss_mib": statistics.fmean(settled) / 1024 if settled else None,
        # Includes a minute of the server settling: an upper bound.
        "bytes_per_client": 1024 * (rss_with_clients_kib - rss_before_clients_kib) / args.clients,
        "aggregator_heap": heap,
        "aggregator_metrics": {k: v for k, v in metrics.items() if k.startswith("flowboard_aggregator_")},
        "process_metrics": {k: v for k, v in metrics.items() if k.startswith(("process_", "python_gc_"))},
        "server_cpu_percent": 100 * (cpu1 - cpu0) / seconds,
        "view_check": check,
        "errors_logged": errors[:10],
        "closed_4008": metrics.get("flowboard_client_closed_slow_total", 0),
        "resyncs": metrics.get("flowboard_client_resyncs_total", 0),
        "ok": check.get("ok") and not errors and not summary["closed"] and not mass_summary.get("closed"),
    }
    if ingest is not None:
        ingest_rss = [(round(s.t), s.rss_kib) for s in ingest.samples]
        results["ingest_rss_kib_over_time"] = ingest_rss
        results["ingest_rss_slope_mib_per_hour_after_15_min"] = rss_slope_mib_per_hour(
            ingest_rss, SOAK_SETTLED_S
        )
    print(_table(["t s", "RSS MiB"], [[t, kib / 1024] for t, kib in rss]))
    lat = summary["latency_ms"]
    slope = results["rss_slope_mib_per_hour_after_15_min"]
    print(
        f"{args.role}: RSS slope after minute 15: {_fmt(slope, 2)} MiB/h (target <= 1);"
        f" steady RSS {_fmt(results['steady_rss_mib'])} MiB;"
        f" {results['bytes_per_client']:,.0f} B/client;"
        f" {heap['bytes_per_window_trade_marginal']:,.0f} B per in-window trade"
        f" ({heap['bytes_per_window_trade_all_state']:,.0f} with all aggregator state)"
    )
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
    "cost": (cost, {"duration": 10.0, "clients": 1000, "rate": 10.0, "settle": 3.0, "repeat": 3}),
    "capacity": (capacity, {"duration": 15.0, "rate": 10.0, "settle": 5.0, "repeat": 1}),
    "overload": (overload, {"duration": 30.0, "clients": 10_000, "rate": 10.0, "warmup": 5.0}),
    "slow": (slow, {"duration": 30.0, "clients": 500, "rate": 10.0, "warmup": 5.0, "repeat": 1}),
    "soak": (soak, {"duration": 1800.0, "clients": 200, "rate": 100.0}),
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
    parser.add_argument(
        "--steps", default="500,1000,2000,3000,4000,5000,6000", help="capacity: client counts"
    )
    parser.add_argument("--sample", type=int, default=50, help="full (latency-measuring) clients")
    parser.add_argument("--slow", type=int, default=10, help="slow: slow clients (half 2 KB/s, half stopped)")
    parser.add_argument("--repeat", type=int, help="cost, capacity, slow: independent runs (own server each)")
    parser.add_argument(
        "--other", type=Path, help="cost: also measure /ws of the checkout at this path, in the same run"
    )
    parser.add_argument("--paths", default="/ws,/ws/stream", help="cost: endpoints measured (/ws first)")
    parser.add_argument("--procs", type=int, default=2, help="counting-client processes (bench.mass)")
    parser.add_argument("--keep-going", action="store_true", help="capacity: go on after a failing step")
    parser.add_argument("--minutes", type=float, help="soak: minutes from the server's start (or --duration)")
    parser.add_argument("--role", choices=["all", "edge"], default="all", help="soak: clients on an edge")
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        help="soak (one process): trace the server's allocations from minute 4, snapshots in this"
        " directory at minute 5, 15, 25, ... (compare: python -m bench.tracemalloc_serve --compare A B)",
    )
    args = parser.parse_args(arguments)
    run, defaults = SCENARIOS[args.scenario]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.scenario == "soak":
        args.sample = min(args.sample, 10)
        if args.tracemalloc is not None and args.role == "edge":
            parser.error("--tracemalloc traces one process (--role all)")
    _raise_nofile()
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if v is not None}
    results = trio.run(run, args)
    name = "soak-edge" if args.scenario == "soak" and args.role == "edge" else args.scenario
    path = _write(name, params, results)
    print(f"wrote {path}")
    check = results.get("view_check")
    if check is not None and check.get("ok") is False:
        print("FAILED: a client's view differs from the server's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
