"""The configuration: sections from flags and FLOWBOARD_* variables, validated once; --help, --version."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
from pathlib import Path

import pytest

import flowboard
from flowboard import errors
from flowboard.cli import main
from flowboard.config import OPTIONS, Config, build_parser, make_config, parse_argv
from flowboard.errors import ConfigError, FlowboardError


def test_each_section_gets_its_values_from_flags_and_the_environment() -> None:
    """Flags and FLOWBOARD_* variables land in their own sections; a flag wins over the variable."""
    env = {"FLOWBOARD_RATE": "7", "FLOWBOARD_MAX_PENDING_TRADES": "9", "FLOWBOARD_DEFLATE": "off"}
    command, config = parse_argv(
        ["serve", "--rate", "50", "--db", "x.db", "--deflate-window-bits", "10", "--markets", "A, B"], env
    )
    assert command == "serve"
    assert config.source.rate == 50.0
    assert config.store.db == "x.db"
    assert config.delivery.session.max_pending_trades == 9
    assert config.delivery.deflate.window_bits == 10
    assert config.delivery.deflate.enabled is False
    assert config.kalshi.markets == ("A", "B")
    assert config.server == Config().server


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--rate", "0"], {}, "--rate=0.0: must be greater than 0"),
        (["--rate", "x"], {}, "--rate='x': could not convert"),
        ([], {"FLOWBOARD_RATE": "x"}, "FLOWBOARD_RATE='x': could not convert"),
        (["--deflate-window-bits", "16"], {}, "--deflate-window-bits=16: must be between 9 and 15"),
        (["--deflate-mem-level", "0"], {}, "--deflate-mem-level=0: must be between 1 and 9"),
        (["--kalshi-env", "staging"], {}, "--kalshi-env: expected one of prod, demo"),
        (["--port", "70000"], {}, "--port=70000: must be between 0 and 65535"),
        (["--role", "edge"], {}, "--role edge needs --redis"),
        (["--source", "bogus"], {}, "--source='bogus': expected sim, kalshi, replay"),
        (["--web-dir", "/no/such/dir"], {}, "--web-dir='/no/such/dir' is not a directory"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_flag_or_variable(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    """Every value is checked once, at start-up, and the error names what the user wrote."""
    with pytest.raises(ConfigError) as error:
        parse_argv(["serve", *argv], env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_help_shows_defaults_units_and_variables() -> None:
    """--help says each flag's default, with its unit, and its FLOWBOARD_* variable."""
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["serve"].format_help().split())  # type: ignore[union-attr]
    assert "--rate RATE simulator: mean trades per second (default 10) [FLOWBOARD_RATE]" in text
    assert "(default 600 s) [FLOWBOARD_SIM_HISTORY]" in text
    assert "(default 7 days) [FLOWBOARD_RETENTION_DAYS]" in text
    assert "--deflate, --no-deflate" in text
    for _, option, _ in OPTIONS:
        if "serve" in option.commands:
            assert option.name in text and f"[{option.env}]" in text


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``flowboard --version`` prints the package's version and exits 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"flowboard {importlib.metadata.version('flowboard')}\n"


def test_make_config_takes_flag_names_only(tmp_path: Path) -> None:
    """Code builds configurations with the flags' names, validated like the command line."""
    config = make_config(port=0, sim_history=5.0, stall_timeout=2.0, db=str(tmp_path / "f.db"))
    assert (config.server.port, config.source.sim_history_s, config.delivery.stall_timeout_s) == (0, 5.0, 2.0)
    with pytest.raises(TypeError, match="no configuration flag --sim-history-s"):
        make_config(sim_history_s=5.0)
    with pytest.raises(ConfigError, match="--workers needs --redis"):
        make_config(workers=2)


def test_record_takes_only_its_flags() -> None:
    """``flowboard record`` needs --out and takes the source flags, not the server's."""
    _, config = parse_argv(["record", "--out", "x.jsonl", "--rate", "3", "--duration", "5"], {})
    assert (config.record.out, config.source.rate, config.record.duration_s) == ("x.jsonl", 3.0, 5.0)
    with pytest.raises(ConfigError, match="needs --out"):
        parse_argv(["record"], {})
    with pytest.raises(ConfigError, match="unrecognized arguments: --port"):
        parse_argv(["record", "--out", "x", "--port", "1"], {})


def test_every_project_error_is_in_the_one_tree() -> None:
    """Each exception the package defines (private ones aside) lives in flowboard.errors, under
    FlowboardError, and the module's docstring draws it."""
    assert errors.__doc__ is not None
    for info in pkgutil.walk_packages(flowboard.__path__, "flowboard."):
        if info.name.startswith("flowboard.testing") or info.name == "flowboard.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException)) or name.startswith("_"):
                continue
            if value.__module__ == info.name:
                assert info.name == "flowboard.errors", f"{info.name}.{name} belongs in flowboard.errors"
                assert issubclass(value, FlowboardError), name
                assert name in errors.__doc__.split(), f"{name} is missing from the tree in the docstring"
