"""Configuration fields that are also command-line flags and ``FLOWBOARD_*`` variables.

A section of the configuration (``flowboard.config.Config``) is a frozen attrs class; a field
declared with :func:`flag` is settable from the command line and the environment, with its
help text (default and unit added) generated from the declaration. A field declared plainly is
a tuning constant: a default with its unit in the name, settable only in code.

A flag's ``parse`` turns text into a value (its ``ValueError`` names the expected form); the
field's validators check the value's range, once, and raise :class:`ConfigError` naming the flag.
This module is pure: the sections of every package (store, ingest, delivery) use it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import attrs

from flowboard.errors import ConfigError

#: The metadata key under which a field's :class:`Flag` is kept.
FLAG = "flowboard.flag"


@attrs.frozen
class Flag:
    """How a configuration field is set from the command line."""

    name: str  # "--rate"; the variable is FLOWBOARD_RATE
    help: str  # what it sets, without the default
    parse: Callable[[str], Any] = str
    unit: str = ""  # appended to the default in --help: "(default 10 s)"
    commands: tuple[str, ...] = ("serve",)  # the commands that take it

    @property
    def env(self) -> str:
        return "FLOWBOARD_" + self.name.lstrip("-").replace("-", "_").upper()


def flag(
    default: Any,
    name: str,
    help: str,
    parse: Callable[[str], Any] = str,
    *,
    unit: str = "",
    commands: tuple[str, ...] = ("serve",),
    validator: Any = None,
) -> Any:
    """A field settable as ``name`` on the command line and as ``FLOWBOARD_<NAME>``."""
    return attrs.field(
        default=default,
        validator=validator,
        metadata={FLAG: Flag(name=name, help=help, parse=parse, unit=unit, commands=commands)},
    )


def _named(attribute: attrs.Attribute[Any]) -> str:
    option = attribute.metadata.get(FLAG)
    return option.name if isinstance(option, Flag) else attribute.name


def positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Validator: greater than 0 (None passes: "not set")."""
    if value is not None and not value > 0:
        raise ConfigError(f"{_named(attribute)}={value!r}: must be greater than 0")


def non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Validator: 0 or more."""
    if not value >= 0:
        raise ConfigError(f"{_named(attribute)}={value!r}: must be 0 or more")


def between(low: int, high: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    """Validator: from ``low`` to ``high``, both included."""

    def check(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{_named(attribute)}={value!r}: must be between {low} and {high}")

    return check


def one_of(choices: Collection[str]) -> Callable[[object, attrs.Attribute[Any], str], None]:
    """Validator: one of ``choices``."""

    def check(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{_named(attribute)}={value!r}: expected {', '.join(choices)}")

    return check


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated list, e.g. market tickers."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise ValueError("expected a comma-separated list")
    return items
