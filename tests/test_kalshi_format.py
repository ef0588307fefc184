"""Kalshi trade messages <-> Trade: exact units, both formats, strict validation."""

from __future__ import annotations

import re
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from strategies import trades

from flowboard.errors import MalformedMessage
from flowboard.ingest.kalshi_format import (
    CENT,
    FeedMessage,
    decode_message,
    encode_envelope,
    encode_legacy_trade_msg,
    encode_trade_msg,
    parse_rest_trade,
    trade_from_msg,
)
from flowboard.model import Trade

# Kalshi's documented example of the current format, verbatim.
CURRENT_EXAMPLE = (
    '{"type":"trade","sid":11,"seq":2,"msg":{'
    '"trade_id":"d91bc706-ee49-470d-82d8-11418bda6fed","market_ticker":"HIGHNY-22DEC23-B53.5",'
    '"yes_price_dollars":"0.3600","no_price_dollars":"0.6400","count_fp":"136.00",'
    '"taker_side":"no","taker_outcome_side":"no","taker_book_side":"ask",'
    '"is_block_trade":false,"ts":1669149841,"ts_ms":1669149841000}}'
)
CURRENT_TRADE = Trade(
    trade_id="d91bc706-ee49-470d-82d8-11418bda6fed",
    ticker="HIGHNY-22DEC23-B53.5",
    yes_price=360_000,
    count=13600,
    taker_side="no",
    ts_ms=1669149841000,
)

# Kalshi's documented example of the legacy format, with its elided ids filled in.
LEGACY_EXAMPLE = (
    '{"type":"trade","sid":1,"seq":42,"msg":{"trade_id":"3f1c2a9e-0b7d-4c55-9a51-2f0e6c1d8b77",'
    '"market_ticker":"KXBTCD-25DEC3117-T101999.99","yes_price":55,"no_price":45,'
    '"count":10,"taker_side":"yes","ts":1707667200}}'
)
LEGACY_TRADE = Trade(
    trade_id="3f1c2a9e-0b7d-4c55-9a51-2f0e6c1d8b77",
    ticker="KXBTCD-25DEC3117-T101999.99",
    yes_price=550_000,
    count=1000,
    taker_side="yes",
    ts_ms=1707667200000,
)


def current_msg(**changes: object) -> dict[str, Any]:
    """The current-format example's ``msg``, with fields replaced (or removed when the value is REMOVE)."""
    msg: dict[str, Any] = orjson.loads(CURRENT_EXAMPLE)["msg"]
    return _apply(msg, changes)


def legacy_msg(**changes: object) -> dict[str, Any]:
    msg: dict[str, Any] = orjson.loads(LEGACY_EXAMPLE)["msg"]
    return _apply(msg, changes)


REMOVE = object()


def _apply(msg: dict[str, Any], changes: dict[str, object]) -> dict[str, Any]:
    for field, value in changes.items():
        if value is REMOVE:
            msg.pop(field, None)
        else:
            msg[field] = value
    return msg


def test_current_example_parses_to_exact_units() -> None:
    """Kalshi's current-format example gives prices in $0.000001 and counts in hundredths, exactly."""
    message = decode_message(CURRENT_EXAMPLE)
    assert message == FeedMessage(
        type="trade", sid=11, seq=2, id=None, msg=orjson.loads(CURRENT_EXAMPLE)["msg"]
    )
    assert trade_from_msg(message.msg) == CURRENT_TRADE


def test_legacy_example_parses_to_exact_units() -> None:
    """Kalshi's legacy example (integer cents, integer count, ts in seconds) gives the same units."""
    message = decode_message(LEGACY_EXAMPLE)
    assert (message.type, message.sid, message.seq) == ("trade", 1, 42)
    assert trade_from_msg(message.msg) == LEGACY_TRADE


@pytest.mark.parametrize(
    ("yes", "no", "units"),
    [
        ("0.4530", "0.5470", 453_000),  # a $0.001-tick market
        ("0.4535", "0.5465", 453_500),  # the finest price Kalshi documents in practice
        ("0.453000", "0.547000", 453_000),  # zeros past the 4th decimal are exact
        ("0.36505", "0.63495", 365_050),  # the spec allows 6 decimals: 5 ...
        ("0.365051", "0.634949", 365_051),  # ... and 6 are kept exactly
        ("0.000001", "0.999999", 1),
        ("0.01", "0.99", 10_000),
        ("0", "1", 0),
        ("1.0000", "0.0000", 1_000_000),
    ],
)
def test_sub_cent_prices_survive(yes: str, no: str, units: int) -> None:
    """Prices are never rounded to cents: every decimal Kalshi sends (up to 6) is kept in $0.000001 units."""
    assert trade_from_msg(current_msg(yes_price_dollars=yes, no_price_dollars=no)).yes_price == units


@pytest.mark.parametrize(
    ("count_fp", "units"), [("3.47", 347), ("0.01", 1), ("136", 13600), ("2500.50", 250050)]
)
def test_fractional_counts_survive(count_fp: str, units: int) -> None:
    """``count_fp`` keeps its hundredths: fractional contracts are counted exactly."""
    assert trade_from_msg(current_msg(count_fp=count_fp)).count == units


def test_one_price_alone_implies_the_other() -> None:
    """With only one side's price present, the other is $1.00 minus it."""
    assert trade_from_msg(current_msg(no_price_dollars=REMOVE)).yes_price == 360_000
    assert trade_from_msg(current_msg(yes_price_dollars=REMOVE)).yes_price == 360_000
    assert trade_from_msg(legacy_msg(yes_price=REMOVE)).yes_price == 550_000


def test_dollar_prices_win_over_legacy_cents() -> None:
    """A transition-period message with both formats is read from the exact dollar strings."""
    msg = current_msg(
        yes_price_dollars="0.4530", no_price_dollars="0.5470", yes_price=45, no_price=55, count=3
    )
    trade = trade_from_msg(msg)
    assert (trade.yes_price, trade.count) == (453_000, 13600)


def test_taker_outcome_side_is_preferred_over_deprecated_taker_side() -> None:
    """``taker_outcome_side`` decides the side; ``taker_side`` only counts when it is absent."""
    assert trade_from_msg(current_msg(taker_outcome_side="yes", taker_side="no")).taker_side == "yes"
    assert trade_from_msg(current_msg(taker_outcome_side=REMOVE, taker_side="yes")).taker_side == "yes"
    assert trade_from_msg(current_msg(taker_outcome_side=None, taker_side="yes")).taker_side == "yes"


def test_ts_ms_is_preferred_over_ts() -> None:
    """``ts_ms`` carries the milliseconds that ``ts`` drops, so it wins when both are present."""
    assert trade_from_msg(current_msg(ts=1669149841, ts_ms=1669149841789)).ts_ms == 1669149841789


@pytest.mark.parametrize(
    ("ts", "ts_ms"),
    [
        ("2022-11-22T20:44:01Z", 1669149841000),
        ("2022-11-22T20:44:01.250Z", 1669149841250),
        ("2022-11-22T20:44:01.250999+00:00", 1669149841250),  # sub-ms digits are dropped, not rounded up
        ("2022-11-22T21:44:01+01:00", 1669149841000),
        ("2022-11-22T20:44:01", 1669149841000),  # no offset: Kalshi's times are UTC
        (1669149841, 1669149841000),
    ],
)
def test_ts_as_seconds_or_iso_string(ts: object, ts_ms: int) -> None:
    """Without ``ts_ms``, ``ts`` is read as integer seconds or as an ISO-8601 date-time."""
    assert trade_from_msg(current_msg(ts=ts, ts_ms=REMOVE)).ts_ms == ts_ms


MALFORMED_TRADES: list[tuple[str, dict[str, Any], str]] = [
    ("no trade_id", current_msg(trade_id=REMOVE), "trade.trade_id: expected a non-empty string, got nothing"),
    ("empty trade_id", current_msg(trade_id=""), "trade.trade_id: expected a non-empty string, got ''"),
    ("numeric trade_id", current_msg(trade_id=7), "trade.trade_id: expected a non-empty string, got 7"),
    ("no ticker", current_msg(market_ticker=REMOVE), "trade.market_ticker: expected a non-empty string"),
    # PostgreSQL refuses a NUL in text (a refused trade is logged one by one), and the API
    # answers 400 for a ticker it could not name: such names stop at the edge, counted.
    (
        "NUL in the ticker",
        current_msg(market_ticker="KXBTC\x00"),
        "trade.market_ticker: expected 1 to 200 printable characters, got 'KXBTC\\x00'",
    ),
    (
        "newline in the trade id",
        current_msg(trade_id="a\nb"),
        "trade.trade_id: expected 1 to 200 printable characters, got 'a\\nb'",
    ),
    ("ticker too long", current_msg(market_ticker="K" * 201), "expected 1 to 200 printable characters"),
    (
        "empty ticker",
        current_msg(market_ticker=""),
        "trade.market_ticker: expected a non-empty string, got ''",
    ),
    (
        "prices not summing to $1",
        current_msg(no_price_dollars="0.6500"),
        "trade.yes_price_dollars + no_price_dollars: expected $1.00 exactly, got 0.3600 + 0.6500",
    ),
    (
        "legacy prices not summing to $1",
        legacy_msg(no_price=46),
        "trade.yes_price + no_price: expected $1.00 exactly, got 0.5500 + 0.4600",
    ),
    ("no price at all", current_msg(yes_price_dollars=REMOVE, no_price_dollars=REMOVE), "got neither"),
    (
        "price above $1",
        current_msg(yes_price_dollars="1.2000", no_price_dollars=REMOVE),
        "trade.yes_price_dollars: expected a price between 0 and 1 dollars, got '1.2000'",
    ),
    (
        "negative price",
        current_msg(yes_price_dollars="-0.1000", no_price_dollars=REMOVE),
        "trade.yes_price_dollars: expected a price between 0 and 1 dollars, got '-0.1000'",
    ),
    (
        "price as a JSON number",
        current_msg(yes_price_dollars=0.36),
        "trade.yes_price_dollars: expected a price in dollars as a decimal string, got 0.36",
    ),
    ("price not a number", current_msg(yes_price_dollars="abc"), "as a decimal string, got 'abc'"),
    ("price NaN", current_msg(yes_price_dollars="NaN"), "as a decimal string, got 'NaN'"),
    ("price infinite", current_msg(yes_price_dollars="Infinity"), "as a decimal string, got 'Infinity'"),
    (
        "price finer than 6 decimals",
        current_msg(yes_price_dollars="0.3600001", no_price_dollars="0.6399999"),
        "trade.yes_price_dollars: expected a price in dollars with at most 6 decimals, got '0.3600001'"
        " (finer values would have to be rounded)",
    ),
    (
        "legacy price above 100 cents",
        legacy_msg(yes_price=101, no_price=REMOVE),
        "trade.yes_price: expected integer cents between 0 and 100, got 101",
    ),
    (
        "legacy price not an integer",
        legacy_msg(yes_price=55.5),
        "expected integer cents between 0 and 100, got 55.5",
    ),
    (
        "legacy price boolean",
        legacy_msg(yes_price=True),
        "expected integer cents between 0 and 100, got True",
    ),
    (
        "zero count",
        current_msg(count_fp="0.00"),
        "trade.count_fp: expected a count greater than 0, got '0.00'",
    ),
    (
        "negative count",
        current_msg(count_fp="-1.00"),
        "trade.count_fp: expected a count greater than 0, got '-1.00'",
    ),
    (
        "count finer than 2 decimals",
        current_msg(count_fp="3.471"),
        "trade.count_fp: expected a contract count with at most 2 decimals, got '3.471'",
    ),
    (
        "count as a JSON number",
        current_msg(count_fp=136),
        "trade.count_fp: expected a contract count as a decimal string, got 136",
    ),
    (
        "no count at all",
        current_msg(count_fp=REMOVE),
        "trade.count_fp: expected a decimal string (or a legacy integer count),"
        " got count_fp=nothing, count=nothing",
    ),
    ("legacy count zero", legacy_msg(count=0), "trade.count: expected a count greater than 0, got 0"),
    # A huge exponent cost seconds of CPU to turn into an integer, and a huge count or time made
    # integers that no store column, wire integer or $ total can hold.
    (
        "count with a huge exponent",
        current_msg(count_fp="1e100000"),
        "trade.count_fp: expected a contract count of at most 1000000000 contracts, got '1e100000'",
    ),
    (
        "price with a huge exponent",
        current_msg(yes_price_dollars="1e100000", no_price_dollars=REMOVE),
        "trade.yes_price_dollars: expected a price between 0 and 1 dollars, got '1e100000'",
    ),
    (
        "count beyond a billion contracts",
        current_msg(count_fp="1000000000.01"),
        "expected a contract count of at most 1000000000 contracts",
    ),
    ("legacy count beyond a billion", legacy_msg(count=10**9 + 1), "of at most 1000000000 contracts"),
    (
        "ts_ms after the year 9999",
        current_msg(ts_ms=10**20),
        "trade.ts_ms: expected a time before the year 10000, got 100000000000000000000",
    ),
    (
        "legacy count as string",
        legacy_msg(count="10"),
        "legacy integer count), got count_fp=nothing, count='10'",
    ),
    (
        "unknown side",
        current_msg(taker_outcome_side="maybe"),
        'trade.taker_outcome_side: expected "yes" or "no", got \'maybe\'',
    ),
    (
        "side in capitals",
        legacy_msg(taker_side="YES"),
        'trade.taker_side: expected "yes" or "no", got \'YES\'',
    ),
    (
        "no side at all",
        current_msg(taker_outcome_side=REMOVE, taker_side=REMOVE),
        'trade.taker_side: expected "yes" or "no", got nothing',
    ),
    (
        "no time at all",
        current_msg(ts=REMOVE, ts_ms=REMOVE),
        "trade.ts: expected integer seconds or an ISO-8601 date-time (or ts_ms), got nothing",
    ),
    ("ts as float seconds", legacy_msg(ts=1707667200.5), "trade.ts: expected integer seconds"),
    ("ts as boolean", legacy_msg(ts=True), "trade.ts: expected integer seconds"),
    ("ts negative", legacy_msg(ts=-1), "trade.ts: expected integer seconds"),
    ("ts not a date", current_msg(ts="yesterday", ts_ms=REMOVE), "trade.ts: expected an ISO-8601 date-time"),
    ("ts a date only", current_msg(ts="2022-11-22", ts_ms=REMOVE), "got '2022-11-22'"),
    ("ts digits as string", current_msg(ts="1669149841", ts_ms=REMOVE), "got '1669149841'"),
    (
        "ts_ms as string",
        current_msg(ts_ms="1669149841000"),
        "trade.ts_ms: expected non-negative integer milliseconds, got '1669149841000'",
    ),
    (
        "ts_ms negative",
        current_msg(ts_ms=-5),
        "trade.ts_ms: expected non-negative integer milliseconds, got -5",
    ),
]


@pytest.mark.parametrize(
    ("msg", "expected"), [case[1:] for case in MALFORMED_TRADES], ids=[case[0] for case in MALFORMED_TRADES]
)
def test_malformed_trade_says_what_was_expected_and_what_came(msg: dict[str, Any], expected: str) -> None:
    """Every unusable trade raises MalformedMessage naming the field, what it should hold and what it held."""
    with pytest.raises(MalformedMessage) as caught:
        trade_from_msg(msg)
    assert expected in str(caught.value)


def test_long_values_are_truncated_in_the_error() -> None:
    """A huge bad value is shown only in part, so a broken feed cannot flood the log."""
    with pytest.raises(MalformedMessage) as caught:
        trade_from_msg(current_msg(market_ticker=["X" * 10_000]))
    text = str(caught.value)
    assert text.startswith("trade.market_ticker: expected a non-empty string, got ['XXXX")
    assert text.endswith("... (10004 chars)")
    assert len(text) < 200


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '{"id":1,"type":"subscribed","msg":{"channel":"trade","sid":1}}',
            FeedMessage(type="subscribed", sid=None, seq=None, id=1, msg={"channel": "trade", "sid": 1}),
        ),
        (
            b'{"id":1,"type":"error","msg":{"code":9,"msg":"Authentication required"}}',
            FeedMessage(
                type="error", sid=None, seq=None, id=1, msg={"code": 9, "msg": "Authentication required"}
            ),
        ),
        ('{"type":"trade","sid":3,"msg":{}}', FeedMessage(type="trade", sid=3, seq=None, id=None, msg={})),
        (
            '{"type":"unknown_future_type"}',
            FeedMessage(type="unknown_future_type", sid=None, seq=None, id=None, msg={}),
        ),
    ],
)
def test_decode_message_splits_envelope_and_msg(raw: str | bytes, expected: FeedMessage) -> None:
    """Replies, errors and seq-less trades decode; absent envelope fields are None, an absent msg is {}."""
    assert decode_message(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "message: expected JSON, got 'not json'"),
        ("", "message: expected JSON, got ''"),
        ("[1, 2]", "message: expected a JSON object, got [1, 2]"),
        ('{"msg":{}}', "message.type: expected a non-empty string, got nothing"),
        ('{"type":""}', "message.type: expected a non-empty string, got ''"),
        ('{"type":5}', "message.type: expected a non-empty string, got 5"),
        ('{"type":"trade","sid":"1"}', "message.sid: expected an integer, got '1'"),
        ('{"type":"trade","seq":1.5}', "message.seq: expected an integer, got 1.5"),
        ('{"type":"trade","seq":true}', "message.seq: expected an integer, got True"),
        ('{"type":"trade","msg":[1]}', "message.msg: expected a JSON object, got [1]"),
    ],
)
def test_decode_message_rejects_what_is_not_an_envelope(raw: str | bytes, expected: str) -> None:
    """Invalid JSON, non-objects and bad envelope fields raise MalformedMessage saying what came."""
    with pytest.raises(MalformedMessage) as caught:
        decode_message(raw)
    assert str(caught.value).startswith(expected)


def test_rest_trade_current_fields() -> None:
    """A REST ``/markets/trades`` entry reads ``ticker`` and ``created_time`` (RFC 3339, ms kept)."""
    entry = {
        "trade_id": "0a6b3c1e-5d2f-4e8a-9b7c-1d2e3f4a5b6c",
        "ticker": "KXBTCD-25DEC3117-T101999.99",
        "yes_price_dollars": "0.4530",
        "no_price_dollars": "0.5470",
        "count_fp": "3.47",
        "taker_side": "no",
        "taker_outcome_side": "yes",
        "created_time": "2025-12-31T21:59:58.123456Z",
    }
    assert parse_rest_trade(entry) == Trade(
        trade_id="0a6b3c1e-5d2f-4e8a-9b7c-1d2e3f4a5b6c",
        ticker="KXBTCD-25DEC3117-T101999.99",
        yes_price=453_000,
        count=347,
        taker_side="yes",
        ts_ms=1767218398123,
    )


def test_rest_trade_legacy_fields() -> None:
    """An older REST entry with integer cents and count parses like a legacy WebSocket trade."""
    entry = {
        "trade_id": "t-1",
        "ticker": "FED-23DEC-T3.00",
        "yes_price": 45,
        "no_price": 55,
        "count": 10,
        "taker_side": "yes",
        "created_time": "2023-12-13T19:00:00Z",
    }
    assert parse_rest_trade(entry) == Trade("t-1", "FED-23DEC-T3.00", 450_000, 1000, "yes", 1702494000000)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ticker": REMOVE}, "rest trade.ticker: expected a non-empty string, got nothing"),
        ({"created_time": REMOVE}, "rest trade.created_time: expected an RFC 3339 date-time, got nothing"),
        (
            {"created_time": 1702494000},
            "rest trade.created_time: expected an RFC 3339 date-time, got 1702494000",
        ),
        ({"created_time": "soon"}, "rest trade.created_time: expected an ISO-8601 date-time, got 'soon'"),
        ({"count_fp": "1.001"}, "rest trade.count_fp: expected a contract count with at most 2 decimals"),
    ],
)
def test_malformed_rest_trade(changes: dict[str, object], expected: str) -> None:
    """REST entries are validated like WebSocket ones, and errors say they came from REST."""
    entry = _apply(
        {
            "trade_id": "t-1",
            "ticker": "FED-23DEC-T3.00",
            "yes_price_dollars": "0.4500",
            "count_fp": "10.00",
            "taker_outcome_side": "yes",
            "created_time": "2023-12-13T19:00:00Z",
        },
        changes,
    )
    with pytest.raises(MalformedMessage) as caught:
        parse_rest_trade(entry)
    assert str(caught.value).startswith(expected)


def test_encode_trade_msg_matches_kalshi_example_exactly() -> None:
    """The encoder writes Kalshi's documented current format field for field: the fake is faithful."""
    assert encode_trade_msg(CURRENT_TRADE) == orjson.loads(CURRENT_EXAMPLE)["msg"]
    assert encode_envelope(encode_trade_msg(CURRENT_TRADE), sid=11, seq=2) == CURRENT_EXAMPLE


def test_encode_envelope_omits_a_missing_seq() -> None:
    """``seq=None`` leaves ``seq`` out, as some trade feeds do; the decoder then reports None."""
    text = encode_envelope({"a": 1}, sid=4, seq=None)
    assert text == '{"type":"trade","sid":4,"msg":{"a":1}}'
    assert decode_message(text).seq is None


def test_encode_legacy_matches_kalshi_example_exactly() -> None:
    """The legacy encoder writes Kalshi's documented legacy fields: integer cents and count, ts seconds."""
    assert encode_legacy_trade_msg(LEGACY_TRADE) == orjson.loads(LEGACY_EXAMPLE)["msg"]


@pytest.mark.parametrize(
    "changes",
    [{"yes_price": 453_000}, {"count": 347}, {"ts_ms": 1707667200001}],
    ids=["sub-cent price", "fractional count", "sub-second time"],
)
def test_encode_legacy_refuses_what_it_cannot_carry(changes: dict[str, Any]) -> None:
    """The legacy format cannot hold sub-cent prices, fractional counts or ms, so encoding raises."""
    with pytest.raises(ValueError, match="legacy trade format"):
        encode_legacy_trade_msg(attrs.evolve(LEGACY_TRADE, **changes))


@given(trades())
def test_round_trip_current_format(trade: Trade) -> None:
    """Any valid trade survives encode -> JSON text -> decode -> parse unchanged, in Kalshi's formats."""
    msg = encode_trade_msg(trade)
    # Kalshi's 4 decimals, or as many as the price needs up to 6.
    assert re.fullmatch(r"[01]\.\d{4,6}", msg["yes_price_dollars"])
    assert re.fullmatch(r"[01]\.\d{4,6}", msg["no_price_dollars"])
    assert re.fullmatch(r"\d+\.\d{2}", msg["count_fp"])
    message = decode_message(encode_envelope(msg, sid=1, seq=9))
    assert (message.type, message.sid, message.seq) == ("trade", 1, 9)
    assert trade_from_msg(message.msg) == trade


@given(trades())
def test_round_trip_legacy_format_when_representable(trade: Trade) -> None:
    """A trade with whole cents, contracts and seconds survives the legacy format unchanged."""
    whole = attrs.evolve(
        trade,
        yes_price=max(CENT, trade.yes_price - trade.yes_price % CENT),
        count=max(100, trade.count - trade.count % 100),
        ts_ms=trade.ts_ms - trade.ts_ms % 1000,
    )
    assert trade_from_msg(encode_legacy_trade_msg(whole)) == whole
