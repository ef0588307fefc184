"""The store's pure parts, without a database or an event loop: the bounded queue, the retry
schedule, paging cursors, migrations, and the checks on --db and the store settings."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowboard.errors import ConfigError, StoreError
from flowboard.model import Trade
from flowboard.store import MIGRATIONS, StoreConfig
from flowboard.store._config import PostgresTarget, SqliteTarget, parse_target
from flowboard.store._pending import PendingTrades, cursor_after, page_cursor, retry_delay_s
from flowboard.store._schema import pending_migrations


def trade(number: int) -> Trade:
    return Trade(f"t{number:06d}", "KXTEST-A", 5000, 100, "yes", 1_760_000_000_000 + number)


@given(capacity=st.integers(1, 50), offers=st.lists(st.integers(0, 30), max_size=20))
def test_pending_trades_keep_the_oldest_that_fit_and_count_the_rest(capacity: int, offers: list[int]) -> None:
    """Whatever is offered is either queued, in offer order, or counted as dropped; never more
    than the capacity is held."""
    pending = PendingTrades(capacity, dropped_ids_kept=100)
    offered: list[Trade] = []
    for size in offers:
        batch = [trade(len(offered) + i) for i in range(size)]
        offered += batch
        pending.offer(batch)
        assert len(pending) <= capacity
    assert len(pending) + pending.dropped_total == len(offered)
    assert pending.oldest(capacity) == offered[: len(pending)]


def test_pending_trades_report_drops_per_offer_and_free_room_when_committed() -> None:
    """offer() returns how many of its trades did not fit; discarding committed trades makes room."""
    pending = PendingTrades(3, dropped_ids_kept=100)
    assert pending.offer(trade(i) for i in range(2)) == 0
    assert pending.offer([trade(2), trade(3), trade(4)]) == 2
    assert pending.oldest(2) == [trade(0), trade(1)]
    pending.discard_oldest(2)
    assert pending.oldest(10) == [trade(2)]
    assert pending.offer([trade(5)]) == 0
    assert pending.dropped_total == 2


def test_dropped_ids_are_kept_until_offered_again_and_past_room_older_trades_become_maybe() -> None:
    """A dropped trade is "yes" until it is queued on a later offer; when more are dropped than
    the ids kept, the oldest by trade time are forgotten and every trade as old is "maybe",
    so that no trade the queue lost can be taken for one it never saw."""
    pending = PendingTrades(1, dropped_ids_kept=2)
    late = Trade("late", "KXA-1", 5000, 100, "yes", 50)
    assert pending.offer([trade(0), trade(1), trade(2)]) == 2
    assert [pending.dropped_ids.of(trade(i)) for i in range(3)] == ["no", "yes", "yes"]
    pending.discard_oldest(1)
    assert pending.offer([trade(1)]) == 0
    assert [pending.dropped_ids.of(trade(i)) for i in range(3)] == ["no", "no", "yes"]
    assert pending.offer([late, trade(3)]) == 2  # late is older than trade(2), trade(3) newer
    assert len(pending.dropped_ids) == 2
    assert [pending.dropped_ids.of(t) for t in (late, trade(2), trade(3))] == ["maybe", "yes", "yes"]
    # Older than the forgotten one: maybe too; newer and never dropped: no.
    assert pending.dropped_ids.of(Trade("older", "KXA-1", 5000, 100, "yes", 10)) == "maybe"
    assert pending.dropped_ids.of(trade(4)) == "no"


def test_retry_delay_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    """Backoff after 1, 2, 3... failures in a row: 0.1, 0.2, 0.4... never above the cap."""
    delays = [retry_delay_s(failures, 0.1, 1.0) for failures in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_page_cursor_without_a_trade_id_starts_below_the_millisecond() -> None:
    """(ts, "") sorts before every real trade at ts, so before_ms alone excludes that millisecond;
    with no position at all the page starts above any possible trade."""
    assert page_cursor(1000, None) == (1000, "")
    assert page_cursor(1000, "abc") == (1000, "abc")
    latest, _ = page_cursor(None, None)
    assert latest >= 2**62


def test_the_cursor_after_stored_rows_is_the_last_ones_time_and_arrival() -> None:
    """Loading in (ts_ms, arrival) order goes on after the last row read, or stays put."""
    rows = [(*attrs.astuple(trade(n)), 10 + n) for n in (3, 7)]
    assert cursor_after(rows, (0, 0)) == (trade(7).ts_ms, 17)
    assert cursor_after([], (5, 2)) == (5, 2)


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    """schema_version relies on versions 1, 2, 3... in order, each with SQL for both dialects."""
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.statements("sqlite") and m.statements("postgres") for m in MIGRATIONS)


def test_pending_migrations_are_the_missing_ones_and_a_newer_database_is_refused() -> None:
    """A fresh database gets every migration, an up-to-date one none, and one written by a newer
    Flowboard is refused with a message rather than used with a schema we do not know."""
    latest = MIGRATIONS[-1].version
    assert pending_migrations(0) == list(MIGRATIONS)
    assert pending_migrations(latest) == []
    with pytest.raises(StoreError, match="newer than this Flowboard knows"):
        pending_migrations(latest + 1)


def test_db_argument_names_a_sqlite_file_or_a_postgres_url(tmp_path: Path) -> None:
    """Paths become SQLite targets; postgresql:// and postgres:// URLs PostgreSQL targets, with a
    description that leaves the password out."""
    assert parse_target(str(tmp_path / "x.db")) == SqliteTarget(tmp_path / "x.db")
    target = parse_target("postgresql://flow:secret@db.example:6543/trades")
    assert isinstance(target, PostgresTarget)
    assert target.description == "db.example:6543/trades"
    assert "secret" not in target.description
    assert isinstance(parse_target("postgres://localhost/x"), PostgresTarget)


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("mysql://localhost/x", "not supported"),
        ("", "empty"),
        (":memory:", "in-memory"),
        ("postgresql://host/x?nosuchoption=1", "not a valid PostgreSQL URL"),
        ("postgresql://host:notaport/x", "expected a number"),
        ("/no/such/dir/flowboard.db", "does not exist"),
    ],
)
def test_db_argument_that_cannot_work_is_a_config_error_saying_what_to_fix(db: str, message: str) -> None:
    """Unsupported schemes, empty or in-memory paths, malformed URLs and missing directories
    stop start-up with a ConfigError that names the problem."""
    with pytest.raises(ConfigError, match=message):
        parse_target(db)


def test_db_argument_naming_a_directory_suggests_a_file_in_it(tmp_path: Path) -> None:
    """A directory is not a database file; the message suggests one inside it."""
    with pytest.raises(ConfigError, match="is a directory"):
        parse_target(str(tmp_path))


def test_store_settings_must_be_positive() -> None:
    """A zero or negative batch size, interval or retention is refused at start-up."""
    with pytest.raises(ConfigError, match="batch_max_trades must be greater than 0"):
        StoreConfig(batch_max_trades=0)
    with pytest.raises(ConfigError, match="retention_days"):
        StoreConfig(retention_days=-1)
