"""Kalshi's trade messages <-> :class:`~flowboard.model.Trade`, with no I/O.

This is the one place where Kalshi's decimal strings (``"0.3600"``, ``"136.00"``) and
legacy integer cents become Flowboard's exact integer units, so it is strict: a value
that cannot be represented exactly is rejected, never rounded, and every rejection is a
:class:`~flowboard.errors.MalformedMessage` that says which field was expected to hold
what and what came instead.

Both of Kalshi's documented ``trade`` formats are read: the current one with
``yes_price_dollars`` / ``count_fp`` / ``taker_outcome_side`` / ``ts_ms``, and the legacy
one with integer ``yes_price`` cents and integer ``count`` that recordings may still hold.
The encoders write the current format, for the simulator and the fake Kalshi server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

import attrs
import orjson

from flowboard.errors import MalformedMessage
from flowboard.model import (
    COUNT_DECIMALS,
    COUNT_SCALE,
    MAX_NAME_CHARS,
    ONE_DOLLAR,
    PRICE_DECIMALS,
    Side,
    Trade,
    from_units,
    to_units,
    units_text,
)

#: Decimals Kalshi writes its prices with today ("0.3600"); its spec allows up to PRICE_DECIMALS.
KALSHI_PRICE_DECIMALS = 4
#: Legacy prices are integer cents; one cent in Flowboard's price units.
CENT = ONE_DOLLAR // 100
#: Legacy counts are whole contracts; one contract in Flowboard's count units.
CONTRACT = COUNT_SCALE
#: The largest trade we take, far beyond any real one: its $ volume (count x price, in USD
#: units) fits a signed 64-bit integer with room for a day of such trades, as the store, the
#: wire and the page need.
MAX_COUNT_CONTRACTS = 10**9
_PRICE_RANGE = "a price between 0 and 1 dollars"
_COUNT_RANGE = f"a contract count of at most {MAX_COUNT_CONTRACTS} contracts"
#: 9999-12-31T23:59:59.999Z: the latest trade time a date-time can name.
MAX_TS_MS = 253_402_300_799_999

# Long enough to recognise a value in a log line, short enough that a hostile or
# corrupted message cannot flood the log.
_SHOWN_CHARS = 60

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


@attrs.frozen(slots=True)
class FeedMessage:
    """One WebSocket message from Kalshi, split into its envelope and its inner ``msg``."""

    type: str
    sid: int | None  # subscription id; absent on command replies
    seq: int | None  # per-subscription sequence; some trade feeds omit it
    id: int | None  # the command id a reply answers
    msg: Mapping[str, object]  # the inner object, empty when the message has none


def decode_message(raw: str | bytes) -> FeedMessage:
    """Parse one raw WebSocket text into its envelope; the inner ``msg`` is left as is."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"message: expected JSON, got {_show(raw)} ({exc})") from None
    if not isinstance(obj, dict):
        raise _malformed("message", "a JSON object", obj)
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise _malformed("message.type", "a non-empty string", kind)
    inner = obj.get("msg")
    if inner is None:
        inner = {}
    elif not isinstance(inner, dict):
        raise _malformed("message.msg", "a JSON object", inner)
    return FeedMessage(
        type=kind,
        sid=_optional_int(obj, "sid", "message"),
        seq=_optional_int(obj, "seq", "message"),
        id=_optional_int(obj, "id", "message"),
        msg=inner,
    )


def trade_from_msg(msg: Mapping[str, object]) -> Trade:
    """The trade in the ``msg`` object of a WebSocket ``trade`` message (current or legacy format)."""
    return _trade(msg, "trade", ticker_field="market_ticker", ts_ms=_ws_ts_ms)


def parse_rest_trade(obj: Mapping[str, object]) -> Trade:
    """The trade in one entry of REST ``GET /markets/trades`` (``ticker``, ``created_time``)."""
    return _trade(obj, "rest trade", ticker_field="ticker", ts_ms=_rest_ts_ms)


def encode_trade_msg(trade: Trade) -> dict[str, Any]:
    """``trade`` as the ``msg`` of a current-format WebSocket ``trade`` message, as Kalshi documents it."""
    return {
        "trade_id": trade.trade_id,
        "market_ticker": trade.ticker,
        # Kalshi's own 4 decimals, and the 5th and 6th where a price has them.
        "yes_price_dollars": units_text(trade.yes_price, PRICE_DECIMALS, KALSHI_PRICE_DECIMALS),
        "no_price_dollars": units_text(trade.no_price, PRICE_DECIMALS, KALSHI_PRICE_DECIMALS),
        "count_fp": _format_units(trade.count, COUNT_DECIMALS),
        "taker_side": trade.taker_side,
        "taker_outcome_side": trade.taker_side,
        # A YES taker lifts the YES ask from the bid side of the book; a NO taker sells YES.
        "taker_book_side": "bid" if trade.taker_side == "yes" else "ask",
        "is_block_trade": False,
        "ts": trade.ts_ms // 1000,
        "ts_ms": trade.ts_ms,
    }


def encode_legacy_trade_msg(trade: Trade) -> dict[str, Any]:
    """``trade`` in the legacy format (integer cents, whole contracts, ``ts`` in seconds).

    Raises ValueError when the legacy format cannot carry the trade exactly, so that a
    legacy message always parses back to the same trade.
    """
    if trade.yes_price % CENT or trade.count % CONTRACT or trade.ts_ms % 1000:
        raise ValueError(
            "the legacy trade format needs a whole-cent price, a whole contract count and a whole-second"
            f" time; got yes_price={trade.yes_price}, count={trade.count}, ts_ms={trade.ts_ms}"
        )
    return {
        "trade_id": trade.trade_id,
        "market_ticker": trade.ticker,
        "yes_price": trade.yes_price // CENT,
        "no_price": trade.no_price // CENT,
        "count": trade.count // CONTRACT,
        "taker_side": trade.taker_side,
        "ts": trade.ts_ms // 1000,
    }


def encode_envelope(msg: Mapping[str, Any], *, sid: int, seq: int | None) -> str:
    """A ``trade`` message as Kalshi sends it: ``{"type":"trade","sid":..,"seq":..,"msg":{..}}``."""
    envelope: dict[str, Any] = {"type": "trade", "sid": sid}
    if seq is not None:
        envelope["seq"] = seq
    envelope["msg"] = msg
    return orjson.dumps(envelope).decode()


def _trade(
    obj: Mapping[str, object],
    where: str,
    *,
    ticker_field: str,
    ts_ms: Callable[[Mapping[str, object], str], int],
) -> Trade:
    return Trade(
        trade_id=_name(obj, "trade_id", where),
        ticker=_name(obj, ticker_field, where),
        yes_price=_yes_price(obj, where),
        count=_count(obj, where),
        taker_side=_taker_side(obj, where),
        ts_ms=ts_ms(obj, where),
    )


def _yes_price(obj: Mapping[str, object], where: str) -> int:
    """The YES price in price units, from the ``*_dollars`` pair or, failing that, legacy cents.

    Messages from the transition period carry both formats; the dollar strings win
    because legacy cents cannot express sub-cent prices.
    """
    if "yes_price_dollars" in obj or "no_price_dollars" in obj:
        yes = _optional_dollars(obj, "yes_price_dollars", where)
        no = _optional_dollars(obj, "no_price_dollars", where)
        pair = "yes_price_dollars + no_price_dollars"
    elif "yes_price" in obj or "no_price" in obj:
        yes = _optional_cents(obj, "yes_price", where)
        no = _optional_cents(obj, "no_price", where)
        pair = "yes_price + no_price"
    else:
        raise MalformedMessage(
            f"{where}: expected yes_price_dollars or no_price_dollars (or legacy yes_price), got neither"
        )
    if yes is not None and no is not None and yes + no != ONE_DOLLAR:
        raise MalformedMessage(
            f"{where}.{pair}: expected $1.00 exactly, got"
            f" {units_text(yes, PRICE_DECIMALS, KALSHI_PRICE_DECIMALS)}"
            f" + {units_text(no, PRICE_DECIMALS, KALSHI_PRICE_DECIMALS)}"
        )
    if yes is not None:
        return yes
    assert no is not None  # one of the pair is present, or we raised above
    return ONE_DOLLAR - no


def _optional_dollars(obj: Mapping[str, object], field: str, where: str) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    units = _decimal_units(value, field, where, PRICE_DECIMALS, "a price in dollars", 1, _PRICE_RANGE)
    if not 0 <= units <= ONE_DOLLAR:
        raise _malformed(f"{where}.{field}", _PRICE_RANGE, value)
    return units


def _optional_cents(obj: Mapping[str, object], field: str, where: str) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= 100:
        raise _malformed(f"{where}.{field}", "integer cents between 0 and 100", value)
    return value * CENT


def _count(obj: Mapping[str, object], where: str) -> int:
    """Contracts in hundredths, from ``count_fp`` or, failing that, the legacy integer ``count``."""
    if obj.get("count_fp") is not None:
        value = obj["count_fp"]
        units = _decimal_units(
            value, "count_fp", where, COUNT_DECIMALS, "a contract count", MAX_COUNT_CONTRACTS, _COUNT_RANGE
        )
        field = "count_fp"
    else:
        value = obj.get("count")
        if not _is_int(value):
            raise MalformedMessage(
                f"{where}.count_fp: expected a decimal string (or a legacy integer count), got"
                f" count_fp={_show(None)}, count={_show(value)}"
            )
        units = value * CONTRACT
        field = "count"
    if units <= 0:
        raise _malformed(f"{where}.{field}", "a count greater than 0", value)
    if units > MAX_COUNT_CONTRACTS * CONTRACT:
        raise _malformed(f"{where}.{field}", _COUNT_RANGE, value)
    return units


def _taker_side(obj: Mapping[str, object], where: str) -> Side:
    # taker_side is deprecated but is all that legacy messages and older REST entries carry.
    field = "taker_outcome_side" if obj.get("taker_outcome_side") is not None else "taker_side"
    value = obj.get(field)
    if value == "yes":
        return "yes"
    if value == "no":
        return "no"
    raise _malformed(f"{where}.{field}", '"yes" or "no"', value)


def _ws_ts_ms(obj: Mapping[str, object], where: str) -> int:
    """Trade time in ms: ``ts_ms`` when present, else ``ts`` as integer seconds or ISO-8601."""
    ts_ms = obj.get("ts_ms")
    if ts_ms is not None:
        if not _is_int(ts_ms) or ts_ms < 0:
            raise _malformed(f"{where}.ts_ms", "non-negative integer milliseconds", ts_ms)
        if ts_ms > MAX_TS_MS:
            raise _malformed(f"{where}.ts_ms", "a time before the year 10000", ts_ms)
        return ts_ms
    ts = obj.get("ts")
    if isinstance(ts, str):
        return _iso_ms(ts, "ts", where)
    if not _is_int(ts) or not 0 <= ts * 1000 <= MAX_TS_MS:
        raise _malformed(f"{where}.ts", "integer seconds or an ISO-8601 date-time (or ts_ms)", ts)
    return ts * 1000


def _rest_ts_ms(obj: Mapping[str, object], where: str) -> int:
    created = obj.get("created_time")
    if not isinstance(created, str):
        raise _malformed(f"{where}.created_time", "an RFC 3339 date-time", created)
    return _iso_ms(created, "created_time", where)


def _iso_ms(value: str, field: str, where: str) -> int:
    # A bare date parses too, as midnight; that is not a trade time.
    has_time = "T" in value or "t" in value or " " in value.strip()
    try:
        moment = datetime.fromisoformat(value) if has_time else None
    except ValueError:
        moment = None
    if moment is None:
        raise _malformed(f"{where}.{field}", "an ISO-8601 date-time", value)
    if moment.tzinfo is None:
        # Kalshi states every time in UTC; an offset-less string can only mean UTC.
        moment = moment.replace(tzinfo=UTC)
    ms = (moment - _EPOCH) // _ONE_MS
    if ms < 0:
        raise _malformed(f"{where}.{field}", "a date-time after 1970", value)
    return ms


def _decimal_units(
    value: object, field: str, where: str, decimals: int, what: str, at_most: int, range_text: str
) -> int:
    """A decimal string as an exact integer count of 10**-decimals; finer values, and values
    beyond ``at_most`` either side of 0 (``range_text`` says the range), are malformed."""
    if not isinstance(value, str):
        raise _malformed(f"{where}.{field}", f"{what} as a decimal string", value)
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise _malformed(f"{where}.{field}", f"{what} as a decimal string", value)
    # Compared before any conversion: the integer of "1e100000" takes seconds to build.
    if abs(number) > at_most:
        raise _malformed(f"{where}.{field}", range_text, value)
    units = to_units(number, decimals)
    if units is None:
        raise MalformedMessage(
            f"{where}.{field}: expected {what} with at most {decimals} decimals, got {_show(value)}"
            " (finer values would have to be rounded)"
        )
    return units


def _nonempty_str(obj: Mapping[str, object], field: str, where: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise _malformed(f"{where}.{field}", "a non-empty string", value)
    return value


def _name(obj: Mapping[str, object], field: str, where: str) -> str:
    """A ticker or trade id: printable (PostgreSQL refuses a NUL in text, and the API cannot be
    asked for a name with control characters) and of reasonable length."""
    value = _nonempty_str(obj, field, where)
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise _malformed(f"{where}.{field}", f"1 to {MAX_NAME_CHARS} printable characters", value)
    return value


def _optional_int(obj: Mapping[str, object], field: str, where: str) -> int | None:
    value = obj.get(field)
    if value is None:
        return None
    if not _is_int(value):
        raise _malformed(f"{where}.{field}", "an integer", value)
    return value


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass, and JSON true is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _format_units(value: int, decimals: int) -> str:
    return f"{from_units(value, decimals):.{decimals}f}"


def _malformed(path: str, expected: str, got: object) -> MalformedMessage:
    return MalformedMessage(f"{path}: expected {expected}, got {_show(got)}")


def _show(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return "nothing"
    shown = repr(value)
    if len(shown) > _SHOWN_CHARS:
        shown = f"{shown[:_SHOWN_CHARS]}... ({len(shown)} chars)"
    return shown
