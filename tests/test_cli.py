"""``flowboard`` as a process: start-up errors, signals. Real time, real subprocesses.

Each test starts ``python -m flowboard`` and stays within a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fake_kalshi import write_test_key
from test_store import postgres_url  # noqa: F401 (a fixture)

from flowboard.testing.wsclient import ConnectionClosed, open_wire_client

REPO = Path(__file__).resolve().parent.parent
#: Lines of a PEM body that no error may quote.
SECRET_LINE = "U0VDUkVULUtFWS1NQVRFUklBTC1ORVZFUi1MT0dHRUQ="


def run_flowboard(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowboard", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flowboard: error: ")
    assert expected in lines[0]
    assert result.stdout == ""


def kalshi_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_flowboard(
        "serve", "--source", "kalshi", "--port", "0", "--db", str(tmp_path / "flowboard.db"), *args
    )


def test_missing_key_file(tmp_path: Path) -> None:
    """A key path that does not exist is named in one line; nothing else is started."""
    missing = tmp_path / "nope.pem"
    result = kalshi_serve(tmp_path, "--kalshi-key-id", "k1", "--kalshi-private-key", str(missing))
    assert_one_line_error(result, f"Kalshi private key file not found: {missing}")
    assert not (tmp_path / "flowboard.db").exists(), "the store is opened only after the key is good"


def test_garbage_pem_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A file that is not a PEM private key is refused; its content never reaches stderr."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(f"-----BEGIN PRIVATE KEY-----\n{SECRET_LINE}\n-----END PRIVATE KEY-----\n")
    result = kalshi_serve(tmp_path, "--kalshi-key-id", "k1", "--kalshi-private-key", str(garbage))
    assert_one_line_error(result, f"Kalshi private key file {garbage} is not a PEM private key")
    assert SECRET_LINE not in result.stderr


def test_non_rsa_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A real PEM key of the wrong kind is refused by kind; none of its body is printed."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    result = kalshi_serve(tmp_path, "--kalshi-key-id", "k1", "--kalshi-private-key", str(path))
    assert_one_line_error(result, "holds a non-RSA key; Kalshi needs RSA")
    body = [line for line in pem.decode().splitlines() if "-----" not in line]
    assert not any(line in result.stderr for line in body)


def test_unreadable_key_file(tmp_path: Path) -> None:
    """A key path that cannot be read (here a directory) says why."""
    result = kalshi_serve(tmp_path, "--kalshi-key-id", "k1", "--kalshi-private-key", str(tmp_path))
    assert_one_line_error(result, f"cannot read Kalshi private key file {tmp_path}: Is a directory")


def test_key_id_without_key(tmp_path: Path) -> None:
    """A key id alone is a half-configured key, not an unsigned connection."""
    result = kalshi_serve(tmp_path, "--kalshi-key-id", "k1")
    assert_one_line_error(result, "--kalshi-key-id needs --kalshi-private-key")


def test_key_without_key_id(tmp_path: Path) -> None:
    """A good key without its id is refused; the key is not printed."""
    path = write_test_key(tmp_path)
    result = kalshi_serve(tmp_path, "--kalshi-private-key", str(path))
    assert_one_line_error(result, "needs its key id (--kalshi-key-id)")
    body = [line for line in path.read_text().splitlines() if "-----" not in line]
    assert not any(line in result.stderr for line in body)


@pytest.mark.parametrize(
    ("flag", "url", "expected"),
    [
        ("--kalshi-ws-url", "http://x/trade-api/ws/v2", "--kalshi-ws-url: expected a ws/wss:// URL"),
        ("--kalshi-ws-url", "ws://x:99999/", "--kalshi-ws-url: expected a ws/wss URL with a valid port"),
        ("--kalshi-rest-url", "wss://x/trade-api/v2", "--kalshi-rest-url: expected a http/https:// URL"),
    ],
)
def test_wrong_url(tmp_path: Path, flag: str, url: str, expected: str) -> None:
    """A Kalshi URL of the wrong scheme or with a bad port is named with what was expected."""
    result = kalshi_serve(tmp_path, flag, url)
    assert_one_line_error(result, expected)
    assert repr(url) in result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    """A port another process holds is reported with what to do about it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_flowboard("serve", "--port", str(port), "--db", str(tmp_path / "flowboard.db"))
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is already in use")


def test_bad_flag() -> None:
    """An unknown flag gets argparse's complaint on one line, not the usage text."""
    result = run_flowboard("serve", "--bogus")
    assert_one_line_error(result, "unrecognized arguments: --bogus (see flowboard serve --help)")


def _stored_trades(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM trades").fetchone()[0])


def _schema_versions(db: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY 1")]


def test_unknown_schema_version_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A database from a newer Flowboard stops start-up with one line; the file stays byte for byte
    as it was (not even the journal mode is set)."""
    db = tmp_path / "newer.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT)")
        connection.execute("INSERT INTO schema_version VALUES (99, 0)")
        connection.commit()
    before = db.read_bytes()
    result = run_flowboard("serve", "--port", "0", "--db", str(db))
    assert_one_line_error(result, "the database has schema version 99, newer than this Flowboard knows")
    assert db.read_bytes() == before, "the file was written to"
    assert _schema_versions(db) == [99]


def test_corrupt_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A file that is not a SQLite database stops start-up with one line; the file is untouched."""
    db = tmp_path / "corrupt.db"
    garbage = random.Random(11).randbytes(8192)
    db.write_bytes(garbage)
    result = run_flowboard("serve", "--port", "0", "--db", str(db))
    assert_one_line_error(result, "cannot open it as a SQLite database")
    assert db.read_bytes() == garbage


async def _ingested_so_far(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("flowboard_trades_ingested_total "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
async def test_signal_closes_clients_with_1001_and_exits_0(tmp_path: Path, signum: signal.Signals) -> None:
    """A signal while a v2 client is connected: the client is closed with 1001 (going away),
    every trade accepted before the signal is in the store, and the process exits 0 within a
    few seconds. SIGHUP is no different from SIGTERM."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "flowboard",
            "serve",
            "--port",
            "0",
            "--sim-history",
            "0",
            "--rate",
            "50",
            "--db",
            str(tmp_path / "flowboard.db"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            output = b""
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, "the server exited before listening"
                output += chunk
        line = output.decode().splitlines()[0]
        assert line.startswith("flowboard listening on http://")
        url = line.rsplit(" ", 1)[1].replace("http://", "ws://") + "/ws"
        client = await open_wire_client(url)
        await client.receive()  # the snapshot: the client is being served
        ingested = await _ingested_so_far(line.rsplit(" ", 1)[1])
        assert ingested > 0
        process.send_signal(signum)
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.receive()
        await client.aclose()
        assert closed.value.code == 1001
        with trio.fail_after(5):
            assert await process.wait() == 0
        assert _stored_trades(tmp_path / "flowboard.db") >= ingested
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


def test_client_that_stops_reading_cannot_hold_up_shutdown(tmp_path: Path) -> None:
    """A peer that never reads fills its socket; the kernel drops it after the stall timeout
    (TCP_USER_TIMEOUT), so SIGTERM still ends the process promptly with exit 0."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowboard",
            "serve",
            "--port",
            "0",
            "--sim-history",
            "0",
            "--rate",
            "2000",
            "--stall-timeout",
            "2",
            "--db",
            str(tmp_path / "flowboard.db"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        stalled.connect((host, int(port)))
        stalled.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        # 2,000 trades/s fill the server's send buffer within seconds; the client never reads.
        time.sleep(6)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=8) == 0
        stalled.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def start_serving(db: str) -> subprocess.Popen[str]:
    """``flowboard serve`` on ``db``, returned once it prints the address it listens on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flowboard", "serve", "--port", "0", "--sim-history", "0", "--db", db],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("flowboard listening on http://"), line
    return process


def stop_serving(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_a_second_server_on_the_same_sqlite_file_stops_at_start_up(tmp_path: Path) -> None:
    """Two servers on one SQLite --db would both write: the second stops with one line (exit 2),
    and once the first has stopped the file is free again."""
    db = str(tmp_path / "flowboard.db")
    first = start_serving(db)
    try:
        second = run_flowboard("serve", "--port", "0", "--sim-history", "0", "--db", db)
        assert_one_line_error(second, f"--db {db} is in use by another Flowboard server")
    finally:
        stop_serving(first)
    stop_serving(start_serving(db))


@pytest.mark.postgres
def test_a_second_server_on_the_same_postgres_database_stops_at_start_up(postgres_url: str) -> None:  # noqa: F811
    """On PostgreSQL an advisory lock makes the second ingest stop with one line (exit 2)."""
    first = start_serving(postgres_url)
    try:
        second = run_flowboard("serve", "--port", "0", "--sim-history", "0", "--db", postgres_url)
        assert_one_line_error(second, "is in use by another Flowboard server")
    finally:
        stop_serving(first)
