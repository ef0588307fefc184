"""One configuration for a Flowboard process, from flags and ``FLOWBOARD_<NAME>`` variables.

Every flag of ``flowboard serve`` can also be set in the environment (``--rate 50`` ==
``FLOWBOARD_RATE=50``); a flag on the command line wins. A value that cannot work stops
the process at start-up with one line that names the flag or variable and what it expects.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from flowboard.errors import ConfigError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@attrs.frozen
class Config:
    """Settings of a ``flowboard serve`` process; units are in the names."""

    host: str = "127.0.0.1"
    port: int = 8000
    source: str = "sim"  # sim | kalshi | replay
    replay_file: str | None = None
    speed: float = 1.0  # replay speed; 0 = as fast as possible
    rate: float = 10.0  # simulator: mean trades per second
    seed: int = 1
    sim_markets: int = 300
    sim_history_s: float = 600.0  # simulator warm start: trades backdated over this many seconds
    sim_burst: tuple[float, float] | None = None  # (trades/s, seconds) played first, then --rate
    db: str = "flowboard.db"
    retention_days: float = 7.0
    web_dir: str = str(WEB_DIR)
    deflate: bool = True
    deflate_window_bits: int = 12
    deflate_mem_level: int = 4
    max_pending_trades: int = 2_000  # per client, before a resync
    max_resyncs: int = 3  # per client per minute, before a 4008 close
    stall_timeout_s: float = 10.0  # a frame the socket has not taken by then -> 4008
    ring_size: int = 20_000  # events kept for resuming clients
    ingest_buffer: int = 10_000  # raw feed messages waiting to be aggregated
    tick_s: float = 1.0  # how often windows expire and the clock is checked
    log_level: str = "info"
    # Abuse limits (flowboard.server.guards): commands a connection may send, connections held.
    command_rate: float = 5.0  # commands per second per connection, on average
    command_burst: int = 20  # commands a connection may send at once
    max_connections: int = 4_000  # WebSocket connections in all; 0 = no limit
    max_connections_per_ip: int = 100  # WebSocket connections from one address; 0 = no limit
    # Origins allowed to open /ws and /ws/stream besides the server's own; ("*",) = any.
    allowed_origins: tuple[str, ...] = ()
    # --source kalshi
    kalshi_env: str = "prod"
    kalshi_ws_url: str | None = None
    kalshi_rest_url: str | None = None
    kalshi_key_id: str = ""
    kalshi_private_key: str | None = None  # path of the PEM file; never its content
    markets: tuple[str, ...] = ()
    # Scale-out (flowboard.scaleout): all | ingest | edge
    role: str = "all"
    redis: str | None = None  # redis://HOST:PORT/N, for --role ingest/edge and --workers
    workers: int = 0  # edge processes of one machine, with one ingest; 0 = one process
    reuse_port: bool = False  # SO_REUSEPORT: share --port with other processes
    stream_maxlen: int = 100_000  # Redis stream entries kept (approximately)
    snapshot_s: float = 5.0  # seconds between the ingest's snapshots in Redis, at least
    redis_backlog: int = 10_000  # batches an ingest holds for Redis while it is away
    redis_prefix: str = "flowboard"  # of the keys in Redis
    # flowboard record
    out: str | None = None
    gzip: bool = False
    duration_s: float | None = None  # stop recording after this long; None = until SIGINT


def _burst(text: str) -> tuple[float, float]:
    rate, sep, seconds = text.partition(":")
    try:
        burst = (float(rate), float(seconds))
    except ValueError:
        burst = (0.0, 0.0)
    if not sep or burst[0] <= 0 or burst[1] <= 0:
        raise ValueError("expected RATE:SECONDS, e.g. 500:10")
    return burst


def _tickers(text: str) -> tuple[str, ...]:
    tickers = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tickers:
        raise ValueError("expected a comma-separated list of market tickers")
    return tickers


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not sep or not host or "/" in host):
            raise ValueError(f"expected * or origins like https://example.com[:port], got {origin!r}")
    if not origins:
        raise ValueError("expected * or a comma-separated list of origins like https://example.com")
    return origins


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://HOST:PORT/N (or rediss://, unix://)")
    return text


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that fails with one line (``flowboard: error: ...``) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see flowboard serve --help)")


# (flag, Config field, parser, help)
_SERVE_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", _port, "port to listen on (0 = any free port)"),
    ("--rate", "rate", _positive(float), "simulator: mean trades per second"),
    ("--seed", "seed", int, "simulator: random seed"),
    ("--sim-markets", "sim_markets", _positive(int), "simulator: number of markets"),
    ("--sim-burst", "sim_burst", _burst, "simulator: RATE:SECONDS played first (e.g. 500:10), then --rate"),
    (
        "--sim-history",
        "sim_history_s",
        _non_negative_float,
        "simulator: seconds of backdated trades at start",
    ),
    ("--speed", "speed", _non_negative_float, "replay speed (0 = as fast as possible)"),
    ("--db", "db", str, "SQLite file path or postgresql:// URL"),
    ("--retention-days", "retention_days", _positive(float), "days of trades to keep in the store"),
    ("--web-dir", "web_dir", str, "directory served at /"),
    ("--deflate-window-bits", "deflate_window_bits", int, "permessage-deflate window bits (9-15)"),
    ("--deflate-mem-level", "deflate_mem_level", int, "permessage-deflate zlib memLevel (1-9)"),
    ("--max-pending-trades", "max_pending_trades", _positive(int), "per client, before a resync"),
    ("--max-resyncs", "max_resyncs", _positive(int), "per client per minute, before closing it (4008)"),
    ("--stall-timeout", "stall_timeout_s", _positive(float), "seconds a frame may wait for a slow socket"),
    ("--ring-size", "ring_size", _positive(int), "events kept for resuming clients"),
    ("--log-level", "log_level", str, "debug, info, warning or error"),
    ("--command-rate", "command_rate", _positive(float), "commands per second a connection may send"),
    ("--command-burst", "command_burst", _positive(int), "commands a connection may send at once"),
    (
        "--max-connections",
        "max_connections",
        _non_negative_int,
        "WebSocket connections in all (0 = no limit; never more than open files allow)",
    ),
    (
        "--max-connections-per-ip",
        "max_connections_per_ip",
        _non_negative_int,
        "WebSocket connections from one address (0 = no limit)",
    ),
    (
        "--allowed-origins",
        "allowed_origins",
        _origins,
        "origins that may open the streams besides the server's own, comma-separated; * = any",
    ),
    ("--kalshi-env", "kalshi_env", str, "Kalshi environment: prod or demo"),
    ("--kalshi-ws-url", "kalshi_ws_url", str, "override the environment's WebSocket URL"),
    ("--kalshi-rest-url", "kalshi_rest_url", str, "override the environment's REST URL (.../trade-api/v2)"),
    ("--kalshi-key-id", "kalshi_key_id", str, "Kalshi API key id (connects unsigned without one)"),
    ("--kalshi-private-key", "kalshi_private_key", str, "path of the PEM private key of that API key id"),
    ("--markets", "markets", _tickers, "only these market tickers, comma-separated (default: all)"),
    ("--redis", "redis", _redis_url, "Redis for --role ingest/edge and --workers: redis://HOST:PORT/N"),
    ("--workers", "workers", _non_negative_int, "one ingest and this many edge processes sharing --port"),
    ("--stream-maxlen", "stream_maxlen", _positive(int), "Redis stream entries kept (about)"),
    ("--snapshot-interval", "snapshot_s", _positive(float), "seconds between snapshots in Redis"),
    ("--redis-backlog", "redis_backlog", _positive(int), "batches an ingest holds while Redis is away"),
    ("--redis-prefix", "redis_prefix", str, "prefix of the keys in Redis (dashboards sharing a database)"),
]

# Options of `flowboard record` besides the source ones.
_RECORD_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--out", "out", str, "the JSON Lines file to write (gzip when it ends in .gz)"),
    ("--duration", "duration_s", _positive(float), "stop after this many seconds (default: until Ctrl-C)"),
]
_SOURCE_FIELDS = {
    "rate",
    "seed",
    "sim_markets",
    "log_level",
    "kalshi_env",
    "kalshi_ws_url",
    "kalshi_rest_url",
    "kalshi_key_id",
    "kalshi_private_key",
    "markets",
}


def _env_name(flag: str) -> str:
    return "FLOWBOARD_" + flag.lstrip("-").replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="flowboard", description="Live trade-flow dashboard for Kalshi.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    serve = commands.add_parser("serve", help="run the dashboard server")
    for flag, field, _, help_text in _SERVE_OPTIONS:
        serve.add_argument(flag, dest=field, default=None, help=f"{help_text} [{_env_name(flag)}]")
    serve.add_argument(
        "--source",
        choices=("sim", "kalshi", "replay"),
        default=None,
        help="where trades come from [FLOWBOARD_SOURCE]",
    )
    serve.add_argument("replay_file", nargs="?", default=None, help="the recording for --source replay")
    serve.add_argument(
        "--role",
        choices=("all", "ingest", "edge"),
        default=None,
        help="all: one process; ingest: source, aggregation, store, publishing to --redis; "
        "edge: serves browsers from --redis [FLOWBOARD_ROLE]",
    )
    serve.add_argument(
        "--reuse-port",
        dest="reuse_port",
        action="store_true",
        default=None,
        help="share --port with other processes (SO_REUSEPORT) [FLOWBOARD_REUSE_PORT]",
    )
    serve.add_argument(
        "--no-deflate", dest="deflate", action="store_false", default=None, help="turn permessage-deflate off"
    )
    record = commands.add_parser("record", help="write the raw feed to a file for --source replay")
    for flag, field, _, help_text in _SERVE_OPTIONS + _RECORD_OPTIONS:
        if field in _SOURCE_FIELDS or field in ("out", "duration_s"):
            record.add_argument(flag, dest=field, default=None, help=f"{help_text} [{_env_name(flag)}]")
    record.add_argument("--source", choices=("sim", "kalshi"), default=None, help="where trades come from")
    record.add_argument("--gzip", action="store_true", default=False, help="gzip the recording")
    return parser


def _value(
    flag: str, field: str, parse: Callable[[str], Any], given: str | None, env: Mapping[str, str]
) -> Any:
    if given is not None:
        origin, text = flag, given
    elif _env_name(flag) in env:
        origin, text = _env_name(flag), env[_env_name(flag)]
    else:
        return attrs.NOTHING
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(f"{origin}={text!r}: {exc}") from None


def parse_record_args(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    values: dict[str, Any] = {}
    for flag, field, parse, _ in _SERVE_OPTIONS + _RECORD_OPTIONS:
        if hasattr(args, field):
            value = _value(flag, field, parse, getattr(args, field), env)
            if value is not attrs.NOTHING:
                values[field] = value
    values["source"] = args.source or env.get("FLOWBOARD_SOURCE", "sim")
    if values["source"] not in ("sim", "kalshi"):
        raise ConfigError(f"FLOWBOARD_SOURCE={values['source']!r}: record takes sim or kalshi")
    if "out" not in values:
        raise ConfigError("flowboard record needs --out FILE")
    values["gzip"] = bool(args.gzip)
    config = Config(**values)
    _check(config)
    return config


def parse_serve_args(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    values: dict[str, Any] = {}
    for flag, field, parse, _ in _SERVE_OPTIONS:
        value = _value(flag, field, parse, getattr(args, field), env)
        if value is not attrs.NOTHING:
            values[field] = value
    source = args.source or env.get("FLOWBOARD_SOURCE", "sim")
    if source not in ("sim", "kalshi", "replay"):
        raise ConfigError(f"FLOWBOARD_SOURCE={source!r}: expected sim, kalshi or replay")
    values["source"] = source
    role = args.role or env.get("FLOWBOARD_ROLE", "all")
    if role not in ("all", "ingest", "edge"):
        raise ConfigError(f"FLOWBOARD_ROLE={role!r}: expected all, ingest or edge")
    values["role"] = role
    if args.reuse_port:
        values["reuse_port"] = True
    elif "FLOWBOARD_REUSE_PORT" in env:
        values["reuse_port"] = _value("--reuse-port", "reuse_port", _bool, None, env)
    if args.deflate is False:
        values["deflate"] = False
    elif "FLOWBOARD_DEFLATE" in env:
        values["deflate"] = _value("--deflate", "deflate", _bool, None, env)
    replay_file = args.replay_file or env.get("FLOWBOARD_REPLAY_FILE")
    if source == "replay":
        if not replay_file:
            raise ConfigError("--source replay needs the recording: flowboard serve --source replay FILE")
        if not Path(replay_file).is_file():
            raise ConfigError(f"replay file {replay_file!r} does not exist or is not a file")
        values["replay_file"] = replay_file
    elif replay_file:
        raise ConfigError(f"unexpected argument {replay_file!r} (a FILE is only taken with --source replay)")
    config = Config(**values)
    _check(config)
    _check_roles(config)
    return config


def _check_roles(config: Config) -> None:
    if config.role in ("ingest", "edge") and config.redis is None:
        raise ConfigError(
            f"--role {config.role} needs --redis redis://HOST:PORT/N (the ingest and edges meet there)"
        )
    if config.workers:
        if config.redis is None:
            raise ConfigError(
                "--workers needs --redis redis://HOST:PORT/N: its ingest and edges share the stream there"
            )
        if config.role != "all":
            raise ConfigError(f"--workers starts its own ingest and edges: leave out --role {config.role}")
        if config.port == 0:
            raise ConfigError("--workers needs a fixed --port for its edges to share")
    elif config.redis is not None and config.role == "all":
        raise ConfigError("--redis is only used with --role ingest, --role edge or --workers N")


def _check(config: Config) -> None:
    if not 9 <= config.deflate_window_bits <= 15:
        raise ConfigError(f"--deflate-window-bits={config.deflate_window_bits}: must be between 9 and 15")
    if not 1 <= config.deflate_mem_level <= 9:
        raise ConfigError(f"--deflate-mem-level={config.deflate_mem_level}: must be between 1 and 9")
    if config.kalshi_env not in ("prod", "demo"):
        raise ConfigError(f"--kalshi-env={config.kalshi_env!r}: expected prod or demo")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level={config.log_level!r}: expected debug, info, warning or error")
    if not Path(config.web_dir).is_dir():
        raise ConfigError(f"--web-dir={config.web_dir!r} is not a directory")


def parse_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[str, Config]:
    """``(command, config)`` for a command line, or ConfigError with one line to show."""
    environ = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    if args.command == "record":
        return args.command, parse_record_args(args, environ)
    return args.command, parse_serve_args(args, environ)
