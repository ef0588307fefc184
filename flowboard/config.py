"""One configuration for a Flowboard process, in sections, from flags and ``FLOWBOARD_<NAME>`` variables.

Every flag of ``flowboard serve`` can also be set in the environment (``--rate 50`` ==
``FLOWBOARD_RATE=50``); a flag on the command line wins. A value that cannot work stops
the process at start-up with one line that names the flag or variable and what it expects.

The configuration is a tree of frozen attrs sections (``Config.server``, ``.source``,
``.kalshi``, ``.store``, ``.delivery``, ``.scaleout``, ``.record``); each part of the process
receives only its own section. The flags are generated from the sections' fields declared with
:func:`flowboard.options.flag` (help, default and unit included); the parsed values are
structured into the sections by cattrs, whose construction runs each field's validators once;
:func:`_check_combinations` checks what involves more than one field.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, get_origin

import attrs
import cattrs

from flowboard.errors import ConfigError
from flowboard.ingest.kalshi import KalshiConfig
from flowboard.model import MINUTE_MS, USD_SCALE
from flowboard.options import FLAG, Flag, between, flag, non_negative, one_of, parse_bool, positive
from flowboard.page import page_dir
from flowboard.protocol.session import SessionLimits
from flowboard.protocol.v2 import MAX_COMMAND_BYTES
from flowboard.store import StoreConfig


def _burst(text: str) -> tuple[float, float]:
    rate, sep, seconds = text.partition(":")
    try:
        burst = (float(rate), float(seconds))
    except ValueError:
        burst = (0.0, 0.0)
    if not sep or burst[0] <= 0 or burst[1] <= 0:
        raise ValueError("expected RATE:SECONDS, e.g. 500:10")
    return burst


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


def _directory(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not Path(value).is_dir():
        raise ConfigError(f"--web-dir={value!r} is not a directory")


@attrs.frozen
class ServerConfig:
    """The HTTP server: where it listens, what it serves, whom it lets in."""

    host: str = flag("127.0.0.1", "--host", "address to listen on")
    port: int = flag(
        8000, "--port", "port to listen on (0 = any free port)", int, validator=between(0, 65535)
    )
    web_dir: str = flag(str(page_dir()), "--web-dir", "directory served at /", validator=_directory)
    log_level: str = flag(
        "info",
        "--log-level",
        "debug, info, warning or error",
        commands=("serve", "record"),
        validator=one_of(("debug", "info", "warning", "error")),
    )
    # Abuse limits (flowboard.server.guards): commands a connection may send, connections held.
    command_rate: float = flag(
        5.0,
        "--command-rate",
        "commands a connection may send, on average",
        float,
        unit="/s",
        validator=positive,
    )
    command_burst: int = flag(
        20, "--command-burst", "commands a connection may send at once", int, validator=positive
    )
    max_connections: int = flag(
        4_000,
        "--max-connections",
        "WebSocket connections in all (0 = no limit; never more than open files allow)",
        int,
        validator=non_negative,
    )
    max_connections_per_ip: int = flag(
        100,
        "--max-connections-per-ip",
        "WebSocket connections from one address (0 = no limit)",
        int,
        validator=non_negative,
    )
    allowed_origins: tuple[str, ...] = flag(
        (),
        "--allowed-origins",
        "origins that may open the streams besides the server's own, comma-separated; * = any",
        _origins,
    )
    tick_s: float = 1.0  # how often windows expire and the clock is checked
    listen_backlog: int = 1024  # connections the kernel holds while none is accepted
    graceful_timeout_s: float = 2.0  # connections may finish this long once the server stops
    shutdown_drain_s: float = 2.0  # clients get this long to take their goodbye frames


@attrs.frozen
class SourceConfig:
    """Where trades come from, and the simulator's settings."""

    kind: str = flag(
        "sim",
        "--source",
        "where trades come from: sim, kalshi or replay FILE",
        commands=("serve", "record"),
        validator=one_of(("sim", "kalshi", "replay")),
    )
    replay_file: str | None = None  # the recording of --source replay (the positional FILE)
    speed: float = flag(
        1.0, "--speed", "replay speed (0 = as fast as possible)", float, unit="x", validator=non_negative
    )
    rate: float = flag(
        10.0,
        "--rate",
        "simulator: mean trades per second",
        float,
        commands=("serve", "record"),
        validator=positive,
    )
    seed: int = flag(1, "--seed", "simulator: random seed", int, commands=("serve", "record"))
    sim_markets: int = flag(
        300,
        "--sim-markets",
        "simulator: number of markets",
        int,
        commands=("serve", "record"),
        validator=positive,
    )
    sim_history_s: float = flag(
        600.0,
        "--sim-history",
        "simulator: backdated trades at start",
        float,
        unit=" s",
        validator=non_negative,
    )
    sim_burst: tuple[float, float] | None = flag(
        None, "--sim-burst", "simulator: RATE:SECONDS played first (e.g. 500:10), then --rate", _burst
    )
    ingest_buffer: int = 10_000  # parsed feed messages waiting to be aggregated
    drain_limit: int = 500  # messages aggregated per pass: one publish (one wake-up per client) for a burst
    metadata_queue: int = 10_000  # tickers waiting for the metadata fetcher


@attrs.frozen
class DeflateSettings:
    """permessage-deflate of /ws and /ws/stream (flowboard.server.deflate applies it)."""

    enabled: bool = flag(True, "--deflate", "permessage-deflate for browsers that offer it", parse_bool)
    window_bits: int = flag(
        12, "--deflate-window-bits", "permessage-deflate window bits, 9-15", int, validator=between(9, 15)
    )
    mem_level: int = flag(
        4, "--deflate-mem-level", "permessage-deflate zlib memLevel, 1-9", int, validator=between(1, 9)
    )
    level: int = attrs.field(default=6, validator=between(0, 9))
    # A client message that inflates past this is refused with 1009 (the command limit).
    max_inflated_bytes: int = MAX_COMMAND_BYTES

    @property
    def compressor_bytes(self) -> int:
        """zlib's documented deflate memory for these settings."""
        return (1 << (self.window_bits + 2)) + (1 << (self.mem_level + 9))


@attrs.frozen
class DeliveryConfig:
    """What each client gets and how: compression, per-client bounds, resumption."""

    deflate: DeflateSettings = attrs.field(factory=DeflateSettings)
    session: SessionLimits = attrs.field(factory=SessionLimits)
    stall_timeout_s: float = flag(
        10.0,
        "--stall-timeout",
        "a frame the socket has not taken by then closes it (4008)",
        float,
        unit=" s",
        validator=positive,
    )
    ring_size: int = flag(20_000, "--ring-size", "events kept for resuming clients", int, validator=positive)
    lag_period_s: float = 0.05  # how often the loop's lag is sampled while frames go out at once


@attrs.frozen
class ScaleoutConfig:
    """Beyond one process (flowboard.scaleout): the role and the Redis stream they meet on."""

    role: str = flag(
        "all",
        "--role",
        "all: one process; ingest: source, aggregation, store, publishing to --redis; "
        "edge: serves browsers from --redis",
        validator=one_of(("all", "ingest", "edge")),
    )
    redis: str | None = flag(
        None, "--redis", "Redis for --role ingest/edge and --workers: redis://HOST:PORT/N", _redis_url
    )
    workers: int = flag(
        0, "--workers", "one ingest and this many edge processes sharing --port", int, validator=non_negative
    )
    reuse_port: bool = flag(
        False, "--reuse-port", "share --port with other processes (SO_REUSEPORT)", parse_bool
    )
    stream_maxlen: int = flag(
        100_000, "--stream-maxlen", "Redis stream entries kept (about)", int, validator=positive
    )
    snapshot_s: float = flag(
        5.0,
        "--snapshot-interval",
        "time between snapshots in Redis, at least",
        float,
        unit=" s",
        validator=positive,
    )
    backlog: int = flag(
        10_000, "--redis-backlog", "batches an ingest holds while Redis is away", int, validator=positive
    )
    prefix: str = flag(
        "flowboard", "--redis-prefix", "prefix of the keys in Redis (dashboards sharing a database)"
    )
    connect_timeout_s: float | None = 5.0  # None: wait as long as it takes
    resume_horizon_s: float = 30.0  # a starting edge's ring reaches back at least this far

    @property
    def url(self) -> str:
        if self.redis is None:
            raise ConfigError("--redis is needed for --role ingest/edge and --workers")
        return self.redis

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:inputs"

    @property
    def snapshot_key(self) -> str:
        return f"{self.prefix}:snapshot"

    def older_snapshot_key(self, slot: int) -> str:
        return f"{self.prefix}:snapshot:{slot}"


@attrs.frozen
class TraderConfig:
    """Trader tools (flowboard.aggregate.alerts, flows, movers): when a trade or a run alerts."""

    alert_floor_usd: int = flag(
        1_000,
        "--alert-floor",
        "whole dollars a trade needs to be a whale alert",
        int,
        unit=" $",
        validator=positive,
    )
    accumulation_usd: int = flag(
        5_000,
        "--accumulation-usd",
        "whole dollars one market side must take within --accumulation-minutes: an accumulation alert",
        int,
        unit=" $",
        validator=positive,
    )
    accumulation_minutes: int = flag(
        5, "--accumulation-minutes", "the period of --accumulation-usd", int, unit=" min", validator=positive
    )
    lists_period_ms: int = 1_000  # flow and mover lists are recomputed (and sent if changed) this often

    def aggregator_options(self) -> dict[str, int]:
        """The aggregator's keyword arguments for these settings, in its exact units."""
        return {
            "whale_usd": self.alert_floor_usd * USD_SCALE,
            "accumulation_usd": self.accumulation_usd * USD_SCALE,
            "accumulation_ms": self.accumulation_minutes * MINUTE_MS,
            "lists_period_ms": self.lists_period_ms,
        }


@attrs.frozen
class RecordConfig:
    """``flowboard record``: where the raw feed goes and for how long."""

    out: str | None = flag(
        None, "--out", "the JSON Lines file to write (gzip when it ends in .gz)", commands=("record",)
    )
    gzip: bool = flag(False, "--gzip", "gzip the recording", parse_bool, commands=("record",))
    duration_s: float | None = flag(
        None,
        "--duration",
        "stop after this long (default: until Ctrl-C)",
        float,
        unit=" s",
        commands=("record",),
        validator=positive,
    )


@attrs.frozen
class Config:
    """Settings of a ``flowboard`` process, one section per part."""

    server: ServerConfig = attrs.field(factory=ServerConfig)
    source: SourceConfig = attrs.field(factory=SourceConfig)
    kalshi: KalshiConfig = attrs.field(factory=KalshiConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    delivery: DeliveryConfig = attrs.field(factory=DeliveryConfig)
    scaleout: ScaleoutConfig = attrs.field(factory=ScaleoutConfig)
    trader: TraderConfig = attrs.field(factory=TraderConfig)
    record: RecordConfig = attrs.field(factory=RecordConfig)


def _is_literal(kind: Any) -> bool:
    origin: object = get_origin(kind)
    return origin is Literal


#: Structures plain values into the sections; errors of the sections' validators pass through
#: as they are (ConfigError, naming the flag), not wrapped.
_converter = cattrs.Converter(detailed_validation=False)
# A Literal field is checked by its section (which names the flag), not refused by cattrs first.
_converter.register_structure_hook_func(_is_literal, lambda value, _: value)


def _options(section: type, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Flag, Any]]:
    """``(path of the field, its flag, its default)`` of every flag field under ``section``."""
    for field in attrs.fields(section):
        option = field.metadata.get(FLAG)
        if isinstance(option, Flag):
            yield (*path, field.name), option, field.default
        else:
            # A nested section is a field whose default is made by an attrs class.
            factory = getattr(field.default, "factory", None)
            if isinstance(factory, type) and attrs.has(factory):
                yield from _options(factory, (*path, field.name))


#: Every flag, in the order of the sections: ``(path, flag, default)``.
OPTIONS = list(_options(Config))


def _dest(option: Flag) -> str:
    return option.name.lstrip("-").replace("-", "_")


def _shown(default: Any, unit: str) -> str:
    if default is None or default == () or default == "":
        return ""
    if isinstance(default, bool):
        return f" (default {'on' if default else 'off'})"
    text = f"{default:g}" if isinstance(default, float) else str(default)
    return f" (default {text}{unit})"


def structure(values: Mapping[str, Any]) -> Config:
    """The configuration with ``values`` (keyed by flag name without the dashes, e.g.
    ``sim_history`` for ``--sim-history``; ``replay_file`` for the recording) set over the
    defaults, validated: ConfigError with one line when it cannot work."""
    by_dest = {_dest(option): path for path, option, _ in OPTIONS}
    by_dest["replay_file"] = ("source", "replay_file")
    tree: dict[str, Any] = {}
    for dest, value in values.items():
        if dest not in by_dest:
            raise TypeError(f"no configuration flag --{dest.replace('_', '-')}")
        *sections, name = by_dest[dest]
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    config = _converter.structure(tree, Config)
    _check_combinations(config)
    return config


def make_config(**values: Any) -> Config:
    """``structure(values)``, for code and tests: ``make_config(port=0, rate=20.0, db=path)``."""
    return structure(values)


def _check_combinations(config: Config) -> None:
    """What no single field can check: values that only work together."""
    source = config.source
    if source.kind == "replay":
        if not source.replay_file:
            raise ConfigError("--source replay needs the recording: flowboard serve --source replay FILE")
        if not Path(source.replay_file).is_file():
            raise ConfigError(f"replay file {source.replay_file!r} does not exist or is not a file")
    elif source.replay_file:
        raise ConfigError(
            f"unexpected argument {source.replay_file!r} (a FILE is only taken with --source replay)"
        )
    scaleout = config.scaleout
    if scaleout.role in ("ingest", "edge") and scaleout.redis is None:
        raise ConfigError(
            f"--role {scaleout.role} needs --redis redis://HOST:PORT/N (the ingest and edges meet there)"
        )
    if scaleout.workers:
        if scaleout.redis is None:
            raise ConfigError(
                "--workers needs --redis redis://HOST:PORT/N: its ingest and edges share the stream there"
            )
        if scaleout.role != "all":
            raise ConfigError(f"--workers starts its own ingest and edges: leave out --role {scaleout.role}")
        if config.server.port == 0:
            raise ConfigError("--workers needs a fixed --port for its edges to share")
    elif scaleout.redis is not None and scaleout.role == "all":
        raise ConfigError("--redis is only used with --role ingest, --role edge or --workers N")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that fails with one line (``flowboard: error: ...``) instead of the usage text."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see flowboard serve --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="flowboard", description="Live trade-flow dashboard for Kalshi.")
    parser.add_argument(
        "--version", action="version", version=f"flowboard {importlib.metadata.version('flowboard')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    serve = commands.add_parser("serve", help="run the dashboard server")
    serve.add_argument("replay_file", nargs="?", default=None, help="the recording for --source replay")
    record = commands.add_parser("record", help="write the raw feed to a file for --source replay")
    for command, sub in (("serve", serve), ("record", record)):
        for _, option, default in OPTIONS:
            if command not in option.commands:
                continue
            help_text = f"{option.help}{_shown(default, option.unit)} [{option.env}]"
            if isinstance(default, bool):
                sub.add_argument(
                    option.name,
                    dest=_dest(option),
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=help_text,
                )
            else:
                sub.add_argument(option.name, dest=_dest(option), default=None, help=help_text)
    return parser


def _values(args: argparse.Namespace, command: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The flags given on the command line or in the environment, parsed (not yet validated)."""
    values: dict[str, Any] = {}
    for _, option, _default in OPTIONS:
        if command not in option.commands:
            continue
        given = getattr(args, _dest(option))
        if isinstance(given, bool):
            values[_dest(option)] = given
            continue
        if given is not None:
            origin, text = option.name, given
        elif option.env in env:
            origin, text = option.env, env[option.env]
        else:
            continue
        try:
            values[_dest(option)] = option.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{origin}={text!r}: {exc}") from None
    return values


def parse_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[str, Config]:
    """``(command, config)`` for a command line, or ConfigError with one line to show."""
    environ = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    values = _values(args, args.command, environ)
    if args.command == "record":
        if values.get("source", "sim") not in ("sim", "kalshi"):
            raise ConfigError(f"--source={values['source']!r}: record takes sim or kalshi")
        if "out" not in values:
            raise ConfigError("flowboard record needs --out FILE")
    else:
        replay_file = args.replay_file or environ.get("FLOWBOARD_REPLAY_FILE")
        if replay_file:
            values["replay_file"] = replay_file
    return args.command, structure(values)
