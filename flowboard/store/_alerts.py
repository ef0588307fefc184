"""The alerts table's rows, shared by both backends (only the placeholders differ)."""

from __future__ import annotations

from typing import Any

from flowboard.aggregate.alerts import ALERT_KINDS, Alert
from flowboard.model import Trade

_TRADE_PART = "alert_id, kind, trade_id, ticker, yes_price, count, taker_side, ts_ms"
ALERT_COLUMNS = f"{_TRADE_PART}, usd, contracts, trades, first_ts_ms"


def create_alerts(text_type: str) -> tuple[str, ...]:
    # usd can pass 2^63 units only for a run of over $92 billion; BIGINT is plenty.
    kinds = ", ".join(f"'{kind}'" for kind in ALERT_KINDS)
    return (
        f"""CREATE TABLE alerts (
            alert_id    {text_type} PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ({kinds})),
            trade_id    TEXT NOT NULL,
            ticker      TEXT NOT NULL,
            yes_price   BIGINT NOT NULL,
            count       BIGINT NOT NULL,
            taker_side  TEXT NOT NULL CHECK (taker_side IN ('yes', 'no')),
            ts_ms       BIGINT NOT NULL,
            usd         BIGINT NOT NULL,
            contracts   BIGINT NOT NULL,
            trades      BIGINT NOT NULL,
            first_ts_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX alerts_by_time ON alerts (ts_ms, alert_id)",
    )


def insert_alert_sql(placeholder: str) -> str:
    # The id is the kind and the raising trade: an alert stored twice is kept once.
    values = ", ".join([placeholder] * 12)
    return f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ({values}) ON CONFLICT (alert_id) DO NOTHING"


def latest_alerts_sql(placeholder: str) -> str:
    return f"SELECT {ALERT_COLUMNS} FROM alerts ORDER BY ts_ms DESC, alert_id DESC LIMIT {placeholder}"


def delete_alerts_sql(placeholder: str) -> str:
    return f"DELETE FROM alerts WHERE ts_ms < {placeholder}"


def alert_row(alert: Alert) -> tuple[Any, ...]:
    t = alert.trade
    return (
        alert.alert_id,
        alert.kind,
        t.trade_id,
        t.ticker,
        t.yes_price,
        t.count,
        t.taker_side,
        t.ts_ms,
        alert.usd,
        alert.contracts,
        alert.trades,
        alert.first_ts_ms,
    )


def alert_of(row: tuple[Any, ...]) -> Alert:
    _, kind, trade_id, ticker, yes_price, count, side, ts_ms, usd, contracts, trades, first_ts_ms = row
    trade = Trade(str(trade_id), str(ticker), int(yes_price), int(count), side, int(ts_ms))
    return Alert(kind, trade, int(usd), int(contracts), int(trades), int(first_ts_ms))
