"""The server under test as a separate process: started, read for its address, sampled, stopped."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@attrs.define
class Sample:
    t: float  # seconds since the server started
    cpu_s: float
    rss_kib: int


class ServerProcess:
    """``python -m flowboard serve --port 0 ...`` in a temp dir, with its open-files limit raised."""

    def __init__(
        self,
        *,
        rate: float,
        seed: int = 42,
        deflate: bool = True,
        extra: list[str] | None = None,
        root: Path = ROOT,
    ):
        # The checkout whose flowboard/ runs (``python -m`` imports from the working directory).
        self.root = root
        self.tmp = tempfile.TemporaryDirectory(prefix="flowboard-bench-")
        self.argv = [
            sys.executable,
            "-m",
            "flowboard",
            "serve",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--rate",
            str(rate),
            "--db",
            str(Path(self.tmp.name) / "bench.db"),
            "--log-level",
            "warning",
            # Every bench client connects from loopback: no per-address or total cap.
            "--max-connections-per-ip",
            "0",
            "--max-connections",
            "0",
        ]
        if not deflate:
            self.argv.append("--no-deflate")
        self.argv += extra or []
        self.url = ""
        self.samples: list[Sample] = []
        self._proc: subprocess.Popen[str] | None = None
        self._started = 0.0
        self._stderr: IO[str] | None = None

    def start(self, timeout_s: float = 60) -> str:
        # Open for the server's lifetime; closed in stop().
        self._stderr = open(Path(self.tmp.name) / "stderr.log", "w")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=_raise_nofile,
        )
        self._started = time.monotonic()
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited: {self.stderr_tail()}")
            if line.startswith("flowboard listening on "):
                self.url = line.split()[-1]
                threading.Thread(target=self._drain, args=(self._proc.stdout,), daemon=True).start()
                return self.url
        raise RuntimeError("server did not report its address in time")

    @staticmethod
    def _drain(stream: IO[str]) -> None:
        for _ in stream:
            pass

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def sample(self) -> Sample:
        sample = Sample(time.monotonic() - self._started, *proc_usage(self.pid))
        self.samples.append(sample)
        return sample

    def stderr_tail(self, lines: int = 20) -> str:
        path = Path(self.tmp.name) / "stderr.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def errors_logged(self) -> list[str]:
        path = Path(self.tmp.name) / "stderr.log"
        if not path.exists():
            return []
        return [line for line in path.read_text().splitlines() if " ERROR " in line or "Traceback" in line]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()

    def cleanup(self) -> None:
        self.tmp.cleanup()


def proc_usage(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, RSS in KiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss


def git_commit(root: Path = ROOT) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    ).stdout.strip()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = git_commit()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "git_commit": commit,
        "git_dirty_files": len(dirty.splitlines()),
    }


class PeerProcess:
    """``python -m bench.peer``: the websockets-library server that ``bench cost`` compares with."""

    def __init__(self, frames_file: Path, *, frames_per_s: float) -> None:
        self.argv = [sys.executable, "-m", "bench.peer", str(frames_file), "--rate", str(frames_per_s)]
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 30) -> str:
        """Starts the peer and returns its ws:// URL."""
        self._proc = subprocess.Popen(
            self.argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=_raise_nofile
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"peer exited with {self._proc.wait()}")
            if line.startswith("peer listening on "):
                return line.split()[-1]
        raise RuntimeError("peer did not report its address in time")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
