"""Scale-out capacity: one process versus one ingest + 2 edges (``--workers 2``) on this machine.

    python -m bench scaleout [--rate 50] [--steps 100,250,500,1000,1500,2000] [--step-s 10]

For each setup the benchmark (this process is the load generator) adds clients step by step
(plain /ws clients, no deflate so that the load generator costs less) and measures, per step:
the end-to-end latency of every trade every client receives (client receipt minus the trade's
time, which is when the simulator emitted it: source -> aggregate -> [Redis ->] edge -> socket),
p50/p99; the CPU of the server processes and of Redis (from /proc and INFO). A setup "serves" a
step while p99 <= 250 ms and every client gets every trade. Reports the largest step each setup
serves, the ratio, the latency the Redis hop adds at the first step, and server CPU per 1,000
clients. Each step also reads the event loop's lag from ``/metrics`` (``flowboard_loop_lag_seconds``;
with edges, whichever edge answers) and the trades in the 10-minute window: the default 50 trades/s
with the simulator's 10 minutes of warm-start history keep 30,000 trades in it, the busy window
whose snapshot must not stall the loop. On a 2-core machine the load generator shares the cores
with the servers: the CPU per 1,000 clients is the figure that carries to a bigger machine.
Seeded; writes bench/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import coredis
import orjson
import trio

from bench.load import histogram_quantile, read_metrics
from bench.server import machine
from flowboard.testing.wsclient import WireClient, open_wire_client

RESULTS_PATH = Path(__file__).parent / "results" / "scaleout.json"
REDIS_URL = os.environ.get("FLOWBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
P99_LIMIT_MS = 250.0
SEED = 20_260_105
_TICKS = os.sysconf("SC_CLK_TCK")


def wall_ms() -> float:
    return time.time_ns() / 1e6


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children that have not been waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [pid]
    for child in out:
        pids += _tree(int(child))
    return pids


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        with suppress(FileNotFoundError, ProcessLookupError):
            total += _cpu_s(member)
    return total


async def _redis_cpu_s() -> float:
    async with coredis.Redis.from_url(REDIS_URL) as redis:
        info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Client:
    """Folds only what latency needs: t0 from each hello and the trades' times."""

    def __init__(self, ws: WireClient) -> None:
        self.ws = ws
        self.latencies: list[float] = []
        self.trades = 0
        self._last_ts = 0

    async def run(self) -> None:
        while True:
            message = await self.ws.receive()
            now = wall_ms()
            frame = orjson.loads(message.text)
            for event in frame[1:]:
                code = event[0]
                if code == "H":
                    self._last_ts = event[1]["t0"]
                elif code == "t":
                    for trade in event[1:]:
                        self._last_ts += trade[4]
                        self.latencies.append(now - self._last_ts)
                        self.trades += 1


@contextmanager
def _servers(setup: str, port: int, rate: float, workdir: Path) -> Iterator[subprocess.Popen[str]]:
    args = [sys.executable, "-m", "flowboard", "serve", "--port", str(port), "--rate", str(rate)]
    args += ["--seed", str(SEED), "--db", str(workdir / f"{setup}.db"), "--log-level", "warning"]
    args += ["--max-pending-trades", "100000", "--sim-history", "600"]
    # Every bench client connects from loopback: no per-address or total cap.
    args += ["--max-connections-per-ip", "0", "--max-connections", "0"]
    if setup == "edges":
        args += ["--workers", "2", "--redis", REDIS_URL, "--redis-prefix", f"bench-{uuid.uuid4().hex}"]
    with open(workdir / f"{setup}.log", "w") as log:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        while not process.stdout.readline().startswith("flowboard listening on"):
            if process.poll() is not None:
                raise RuntimeError(f"{setup} did not start; see {workdir / (setup + '.log')}")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(
    setup: str, port: int, steps: list[int], step_s: float, rate: float
) -> list[dict[str, Any]]:
    url = f"ws://127.0.0.1:{port}/ws"
    clients: list[Client] = []
    rows = []
    async with trio.open_nursery() as nursery:
        for target in steps:
            while len(clients) < target:
                client = Client(await open_wire_client(url, deflate=False))
                clients.append(client)
                nursery.start_soon(client.run)
            await trio.sleep(2)  # snapshots sent, connection bursts over
            for client in clients:
                client.latencies.clear()
                client.trades = 0
            http_url = f"http://127.0.0.1:{port}"
            metrics_before = await read_metrics(http_url)
            server_cpu, redis_cpu, started = _tree_cpu_s(_server_pid), await _redis_cpu_s(), time.monotonic()
            await trio.sleep(step_s)
            elapsed = time.monotonic() - started
            server_cpu = (_tree_cpu_s(_server_pid) - server_cpu) / elapsed
            redis_cpu = (await _redis_cpu_s() - redis_cpu) / elapsed
            metrics_after = await read_metrics(http_url)
            lag_p99 = histogram_quantile(metrics_before, metrics_after, "flowboard_loop_lag_seconds", 0.99)
            latencies = [value for client in clients for value in client.latencies]
            counts = [client.trades for client in clients]
            row = {
                "setup": setup,
                "clients": target,
                "p50_ms": round(_percentile(latencies, 0.50), 1),
                "p99_ms": round(_percentile(latencies, 0.99), 1),
                "trades_per_client_min": min(counts),
                "trades_expected": round(rate * step_s),
                "server_cpu_cores": round(server_cpu, 3),
                "redis_cpu_cores": round(redis_cpu, 4),
                "loop_lag_p99_ms": "not exported"
                if not any(k.startswith("flowboard_loop_lag_seconds") for k in metrics_after)
                else (None if lag_p99 is None else 1000 * lag_p99),
            }
            row["served"] = row["p99_ms"] <= P99_LIMIT_MS and min(counts) >= 0.8 * rate * step_s
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not row["served"]:
                break
        nursery.cancel_scope.cancel()
    for client in clients:
        await client.ws.aclose()
    return rows


_server_pid = 0


def main(argv: Sequence[str] | None = None) -> None:
    global _server_pid
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="simulated trades per second (50: 30,000 in the window)"
    )
    parser.add_argument(
        "--steps", default="100,250,500,1000,1500,2000", help="client counts, comma-separated"
    )
    parser.add_argument("--step-s", type=float, default=10.0, help="seconds measured per step")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    # The simulator backdates 10 minutes of trades at start (--sim-history 600, the default), so the
    # 10-minute window holds rate x 600 trades from the first step on.
    results: dict[str, Any] = {
        "window_trades_expected": round(args.rate * 600),
        "rate": args.rate,
        "steps": steps,
        "step_s": args.step_s,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for setup in ("single", "edges"):
            port = 18_000 + os.getpid() % 1000
            with _servers(setup, port, args.rate, Path(tmp)) as process:
                _server_pid = process.pid
                time.sleep(2)
                results["rows"] += trio.run(_measure, setup, port, steps, args.step_s, args.rate)
    summary: dict[str, Any] = {}
    for setup in ("single", "edges"):
        rows = [row for row in results["rows"] if row["setup"] == setup]
        served = [row for row in rows if row["served"]]
        best = served[-1] if served else None
        summary[setup] = {
            "clients_within_p99_250ms": best["clients"] if best else 0,
            "p50_ms_first_step": rows[0]["p50_ms"],
            "p99_ms_first_step": rows[0]["p99_ms"],
            "server_cpu_cores_per_1000_clients": round(1000 * best["server_cpu_cores"] / best["clients"], 3)
            if best
            else None,
            "redis_cpu_cores_max": max(row["redis_cpu_cores"] for row in rows),
            "loop_lag_p99_ms_per_step": [row["loop_lag_p99_ms"] for row in rows],
        }
    single, edges = summary["single"], summary["edges"]
    summary["capacity_ratio_edges_over_single"] = (
        round(edges["clients_within_p99_250ms"] / single["clients_within_p99_250ms"], 2)
        if single["clients_within_p99_250ms"]
        else None
    )
    summary["redis_hop_adds_ms"] = {
        "p50": round(edges["p50_ms_first_step"] - single["p50_ms_first_step"], 1),
        "p99": round(edges["p99_ms_first_step"] - single["p99_ms_first_step"], 1),
    }
    # CPU model, cores, Python, git commit: as every other bench command records them.
    summary["machine"] = machine()
    results["command"] = "python -m bench scaleout " + " ".join(sys.argv[1:] if argv is None else argv)
    summary["note"] = (
        "the load generator runs on the same cores: steps past a core's worth of clients measure it too"
    )
    results["summary"] = summary
    print(json.dumps(summary, indent=2))
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
