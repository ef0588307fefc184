"""What the dashboard page costs a viewer's machine, measured in headless Chromium.

For each simulator rate it starts the real server (``flowboard serve``, seeded simulator),
opens the page in Debian's Chromium and reports:

- **first complete render**: ms from navigation start to the ``flowboard:first-render``
  mark, which the page sets in the animation frame *after* the one that painted the
  hello + snapshot (so the snapshot was on screen). Measured ``--loads`` times: the first
  load with a cold cache, the rest warm.
- **main-thread busy share**: CDP ``Performance.getMetrics`` ``TaskDuration`` (all main-
  thread tasks: script, style, layout, paint) over wall time, after a warm-up; and the
  renderer main thread's CPU time from /proc (``main_thread_cpu_share``), which, unlike
  task wall time, does not grow when other processes on the machine preempt it.
- **JS heap growth**: ``JSHeapUsedSize`` after a forced GC at the end minus after a forced
  GC at the start of the measured run, with samples along the way; DOM node count too.

Targets (the issue): busy <= 5 % at 10 trades/s and <= 25 % at 100 trades/s; heap growth
<= 2 MB over 10 minutes at 100 trades/s; first render <= 500 ms on loopback.

The machine these run on is shared: wall-time shares (busy) grow when other processes preempt
the renderer, so ``--repeat N`` runs each rate N times and records the run with the median busy
share, with every run's busy / CPU / cold-render figures and their medians (``repeats``).

Usage:
    .venv/bin/python bench/browser_bench.py                       # 10 and 100 trades/s, 60 s each
    .venv/bin/python bench/browser_bench.py --repeat 3            # the same, median of 3 runs each
    .venv/bin/python bench/browser_bench.py --rates 100 --duration 600   # the 10-minute heap run
Writes bench/results/browser.json (merged by rate, so the two runs above can share it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "browser.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TARGETS = {
    "busy_share": {10: 0.05, 100: 0.25},
    "heap_growth_bytes_per_10min": 2 * 1024 * 1024,
    "first_render_ms": 500,
}
LISTENING = re.compile(r"flowboard listening on (http://\S+)")


def start_server(rate: float, seed: int, db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowboard",
            "serve",
            "--port",
            "0",
            "--db",
            str(db),
            "--rate",
            str(rate),
            "--seed",
            str(seed),
            "--sim-history",
            "900",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited with {proc.wait()}")
        match = LISTENING.search(line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("server did not print its address")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return seen


def renderer_pids() -> list[int]:
    """Our Chromium's renderer processes (descendants of this process)."""
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"--type=renderer" in cmdline and me in _ancestors(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def main_thread_cpu_s(pids: list[int]) -> float:
    """CPU seconds used by the renderers' main threads (tid == pid), immune to preemption."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def heap_after_gc(cdp: Any) -> float:
    cdp.send("HeapProfiler.collectGarbage")
    return metrics(cdp)["JSHeapUsedSize"]


def first_render(browser: Any, url: str, loads: int) -> list[float]:
    # Playwright's wait_for_function evaluates a string, which the page's CSP (no unsafe-eval)
    # refuses; the CSP itself costs the page nothing measurable here.
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True)
    times = []
    try:
        page = context.new_page()
        for _ in range(loads):
            page.goto(url)
            page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=30_000)
            times.append(page.evaluate("performance.getEntriesByName('flowboard:first-render')[0].startTime"))
    finally:
        context.close()
    return times


def run_rate(browser: Any, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(rate, args.seed, Path(tmp) / "bench.sqlite3")
        try:
            renders = first_render(browser, url + "/", args.loads)
            context = browser.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("crash", lambda _page: errors.append("renderer crashed"))
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable", {"timeDomain": "timeTicks"})
            page.goto(url + "/")
            page.wait_for_function("document.documentElement.dataset.ready === '1'", timeout=30_000)
            page.wait_for_timeout(args.warmup * 1000)

            heap_start = heap_after_gc(cdp)
            renderers = renderer_pids()
            cpu_start = main_thread_cpu_s(renderers)
            start = metrics(cdp)
            trades_start = page.evaluate("flowboard.state.tradesSeen")
            frames_start = page.evaluate("flowboard.state.frames")
            samples = []
            t_begin = time.monotonic()
            next_sample = args.sample
            while (elapsed := time.monotonic() - t_begin) < args.duration and not errors:
                page.wait_for_timeout(min(1000, max(1, (args.duration - elapsed) * 1000)))
                if time.monotonic() - t_begin >= next_sample:
                    m = metrics(cdp)
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - t_begin, 1),
                            "heap_used_bytes": int(m["JSHeapUsedSize"]),
                            "nodes": int(m["Nodes"]),
                        }
                    )
                    next_sample += args.sample
            end = metrics(cdp)
            cpu_end = main_thread_cpu_s(renderers)
            trades = page.evaluate("flowboard.state.tradesSeen") - trades_start
            frames = page.evaluate("flowboard.state.frames") - frames_start
            heap_end = heap_after_gc(cdp)
            context.close()
        finally:
            stop_server(proc)

    wall = end["Timestamp"] - start["Timestamp"]

    def share(name: str) -> float:
        return round((end[name] - start[name]) / wall, 4)

    result = {
        "rate_requested": rate,
        "duration_s": round(wall, 1),
        "warmup_s": args.warmup,
        "trades_per_s_received": round(trades / wall, 1),
        "frames_per_s_received": round(frames / wall, 1),
        "main_thread_busy_share": share("TaskDuration"),
        "main_thread_cpu_share": round((cpu_end - cpu_start) / wall, 4),
        "renderer_processes": len(renderers),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "script_share": share("ScriptDuration"),
        "style_layout_share": round(share("RecalcStyleDuration") + share("LayoutDuration"), 4),
        "heap_used_start_bytes": int(heap_start),
        "heap_used_end_bytes": int(heap_end),
        "heap_growth_bytes": int(heap_end - heap_start),
        "dom_nodes_end": int(end["Nodes"]),
        "first_render_ms": [round(t, 1) for t in renders],
        "first_render_cold_ms": round(renders[0], 1),
        "first_render_warm_median_ms": round(statistics.median(renders[1:]), 1) if len(renders) > 1 else None,
        "samples": samples,
        "page_errors": errors,
    }
    target = TARGETS["busy_share"].get(int(rate))
    if target is not None:
        result["busy_target"] = target
        result["busy_ok"] = result["main_thread_busy_share"] <= target
    result["first_render_ok"] = max(renders) <= TARGETS["first_render_ms"]
    if int(rate) == 100:
        # Scale to the 10-minute target only for reporting; the run's own duration is stated.
        result["heap_growth_target_bytes_per_10min"] = TARGETS["heap_growth_bytes_per_10min"]
        result["heap_ok"] = result["heap_growth_bytes"] <= TARGETS["heap_growth_bytes_per_10min"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="10,100", help="simulator trades/s, comma-separated")
    parser.add_argument("--duration", type=float, default=60, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=20, help="seconds before measuring")
    parser.add_argument("--sample", type=float, default=30, help="seconds between heap samples")
    parser.add_argument("--loads", type=int, default=5, help="page loads for first-render timing")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs per rate; the median-busy run is kept")
    parser.add_argument("--note", default="", help="free text stored with each run (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is absent (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        version = browser.version
        for rate in (float(r) for r in args.rates.split(",")):
            print(
                f"rate {rate:g}/s: measuring {args.duration:g} s after {args.warmup:g} s warm-up...",
                flush=True,
            )
            tries = [run_rate(browser, rate, args) for _ in range(args.repeat)]
            run = sorted(tries, key=lambda r: r["main_thread_busy_share"])[(len(tries) - 1) // 2]
            if len(tries) > 1:
                run["repeats"] = {
                    key: {"runs": [t[key] for t in tries], "median": statistics.median(t[key] for t in tries)}
                    for key in ("main_thread_busy_share", "main_thread_cpu_share", "first_render_cold_ms",
                                "first_render_warm_median_ms", "heap_growth_bytes", "load_average_1m_at_end")
                }
                busy_median = run["repeats"]["main_thread_busy_share"]["median"]
                run["busy_ok"] = busy_median <= run.get("busy_target", 1)
            if args.note:
                run["note"] = args.note
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "samples"}, indent=1), flush=True)
        browser.close()

    previous: dict[str, Any] = {}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
    by_rate = {f"{r['rate_requested']}:{int(r['duration_s'])}": r for r in previous.get("runs", [])}
    for run in runs:
        run["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        run["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        run["chromium"] = version
        by_rate[f"{run['rate_requested']}:{int(run['duration_s'])}"] = run
    out = {
        "targets": TARGETS,
        "runs": sorted(by_rate.values(), key=lambda r: (r["rate_requested"], r["duration_s"])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
