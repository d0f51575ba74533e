"""No row can fail to be stored: rows built from hostile text and numbers go through the spool into PostgreSQL and
SQLite, every one of them, with their text intact wherever a database can hold it (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kodify_proxy.acceptance import Client
from kodify_proxy.database import parse_url
from kodify_proxy.exchange import DevEvent, Exchange
from kodify_proxy.journal.database import journal_engine
from kodify_proxy.journal.migrate import upgrade
from kodify_proxy.journal.record import INT_MAX, INT_MIN, BodyPolicy, JournalRow, build_row, storable_text
from kodify_proxy.journal.spool import Spool
from kodify_proxy.journal.writer import JournalStore
from tests.journal_support import fresh_database

STARTED = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
POLICY = BodyPolicy(keep=True, max_bytes=4096)
TEXT_FIELDS = ("model", "user_id", "key_alias", "route", "upstream", "language", "completion_id", "error_message")
EVENT_TEXT = ("event_type", "select_kind", "view_id")
# What a JSON decoder hands us from `\u` escapes and what else a client can send: lone surrogates, NUL, the
# noncharacters U+FFFE/U+FFFF, C0 and C1 controls, and text of a megabyte.
_SPECIAL = st.sampled_from(["\ud800", "\udfff", "\udbff\udc00", "\x00", "\ufffe", "\uffff", "\x01\x1b\x7f\x9f", "é"])
HOSTILE = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.lists(st.one_of(_SPECIAL, st.text(max_size=5)), max_size=8).map("".join),
    st.builds(lambda c: c * (1 << 20), _SPECIAL),
)
HUGE_INT = st.one_of(st.integers(), st.sampled_from([2**31, 2**63, 2**64 + 1, -(2**70), 10**40]))
_ids = itertools.count()


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    """An exchange whose client-chosen fields are anything a JSON body or a header could carry."""
    texts: dict[str, Any] = {name: draw(st.none() | HOSTILE) for name in TEXT_FIELDS}
    event = {name: draw(st.none() | HOSTILE) for name in EVENT_TEXT}
    body = draw(HOSTILE).encode("utf-8", "surrogatepass")  # invalid UTF-8 when it holds surrogates
    plugin: dict[str, Any] = {"client": Client(draw(HOSTILE), draw(st.none() | HOSTILE))}
    if draw(st.booleans()):  # a Continue dev-data event instead of Tabby's
        schema, response_id, data_json = (draw(HOSTILE) for _ in range(3))
        plugin["dev_event"] = DevEvent(event.pop("event_type") or "", schema, response_id, data_json)
    return Exchange(
        request_id=f"hyp-{next(_ids)}",
        method="POST",
        route="/v1/completions",
        path=texts.pop("route") or "/v1/completions",
        started_at=STARTED,
        t0=1.0,
        ended_at=1.5,
        completed=True,
        status=draw(st.sampled_from([200, 400, 404])),
        content_type="application/json",
        request_body=body,
        response_body=bytearray(body),
        response_bytes=len(body),
        error_type="invalid_request_error",
        prompt_tokens=draw(st.none() | HUGE_INT),
        completion_tokens=draw(st.none() | HUGE_INT),
        n=draw(st.none() | HUGE_INT),
        event={
            "type": event.pop("event_type", None),
            **event,
            "choice_index": draw(HUGE_INT),
            "elapsed": draw(HUGE_INT),
        },
        **texts,
        **plugin,
    )


@pytest.fixture(scope="module")
def stores(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, JournalStore]]:
    folder = tmp_path_factory.mktemp("storable")
    with fresh_database(database_url) as url:
        found = {}
        for kind, text in (("postgresql", url), ("sqlite", f"sqlite:///{folder / 'journal.sqlite3'}")):
            upgrade(parse_url(text))
            found[kind] = JournalStore(journal_engine(parse_url(text)))
        yield found
        for store in found.values():
            store.engine.dispose()


def through_spool(rows: list[JournalRow], folder: Path) -> list[JournalRow]:
    """What the writer does: append (fsync), read back, commit."""
    spool = Spool(folder)
    try:
        spool.append(rows)
        out: list[JournalRow] = []
        while (chunk := spool.read(100)) is not None:
            out += chunk.rows
            spool.commit(chunk)
        return out
    finally:
        spool.close()


def stored_rows(store: JournalStore) -> dict[str, dict[str, Any]]:
    with store.engine.begin() as connection:
        found = {
            row["request_id"]: dict(row)
            for row in connection.execute(sa.text("SELECT * FROM kodify_journal")).mappings()
        }
        connection.execute(sa.text("DELETE FROM kodify_journal"))
    return found


def expected_text(value: str | None, limit: int | None) -> str | None:
    """The original, where a database can hold it: no NUL, no lone surrogate, cut to its column."""
    if value is None:
        return None
    text, replaced = storable_text(value, limit)
    return None if replaced or "\x00" in value[:limit] else text


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(exchanges(), min_size=1, max_size=4))
def test_every_row_built_from_hostile_input_is_stored_whole_in_both_databases(
    batch: list[Exchange], stores: dict[str, JournalStore], tmp_path: Path
) -> None:
    rows = [build_row(exchange, POLICY) for exchange in batch]
    spooled = through_spool(rows, tmp_path / f"spool-{rows[0].request_id}")
    assert [row.request_id for row in spooled] == [row.request_id for row in rows]
    for kind, store in stores.items():
        store.insert(spooled)
        stored = stored_rows(store)
        assert sorted(stored) == sorted(row.request_id for row in rows), kind  # rows in = rows out
        for exchange, row in zip(batch, rows, strict=True):
            check_row(exchange, row, stored[row.request_id])


def plugin_texts(exchange: Exchange) -> list[tuple[str, int | None, str | None]]:
    """(column, its length, the text sent) of a Tabby or Continue event and its client."""
    tabby = exchange.event or {}
    found: list[tuple[str, int | None, str | None]] = [
        ("select_kind", 32, tabby.get("select_kind")),
        ("view_id", 128, tabby.get("view_id")),
    ]
    assert exchange.client is not None
    found += [("client", 64, exchange.client.name), ("client_version", 64, exchange.client.version)]
    if (dev := exchange.dev_event) is None:
        return [*found, ("event_type", 64, tabby.get("type"))]
    texts = [("event_type", 64, dev.name), ("event_schema", 32, dev.schema), ("response_id", 128, dev.response_id)]
    return [*found, *texts, ("event_data", None, dev.data_json)]


def check_row(exchange: Exchange, row: JournalRow, stored: dict[str, Any]) -> None:
    """Text that was storable comes back as sent; text that was not is marked; numbers fit their columns."""
    limits = {"model": 255, "user_id": 255, "key_alias": 255, "route": 512, "upstream": 512, "language": 64}
    limits |= {"completion_id": 64, "error_message": 2000}
    replaced = False
    for name in TEXT_FIELDS:
        original = exchange.path if name == "route" else getattr(exchange, name)
        want = expected_text(original, limits[name])
        replaced |= original is not None and storable_text(original, limits[name])[1]
        if want is not None and (want or name != "error_message"):  # an empty message is no message
            assert stored[name] == want, name
    for name, limit, original in plugin_texts(exchange):
        want = expected_text(original, limit)
        replaced |= original is not None and storable_text(original, limit)[1]
        if want is not None:
            assert stored[name] == want, name
    assert stored["text_replaced"] == replaced == row.text_replaced
    for name in ("prompt_tokens", "completion_tokens", "n", "choice_index", "elapsed_ms"):
        assert stored[name] is None or INT_MIN <= stored[name] <= INT_MAX
    assert stored["request_bytes"] == len(exchange.request_body)
