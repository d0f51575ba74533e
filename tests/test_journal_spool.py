"""The durable spool: rows come back in the order written, across segments and restarts, and never twice in one run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kodify_proxy.journal.record import JournalRow
from kodify_proxy.journal.spool import REJECTED_NAME, Spool, SpoolLocked


def make_row(i: int, body: str = "") -> JournalRow:
    return JournalRow(
        request_id=f"r{i:05d}",
        started_at=datetime(2025, 11, 27, tzinfo=UTC),
        method="POST",
        route="/v1/completions",
        status=200,
        latency_ms=float(i),
        request_body=body or None,
    )


def read_all(spool: Spool, limit: int = 3) -> list[str]:
    ids = []
    while (chunk := spool.read(limit)) is not None:
        ids += [row.request_id for row in chunk.rows]
        spool.commit(chunk)
    return ids


def test_rows_come_back_in_order_and_the_spool_empties(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_row(i) for i in range(5)])
    spool.append([make_row(i) for i in range(5, 8)])
    assert spool.pending() and spool.pending_bytes() > 0
    assert read_all(spool) == [f"r{i:05d}" for i in range(8)]
    assert not spool.pending() and spool.pending_bytes() == 0
    assert list(tmp_path.glob("segment-*")) == []


def test_rows_appended_while_reading_are_read_after_the_older_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_row(0), make_row(1)])
    first = spool.read(1)
    assert first is not None and [r.request_id for r in first.rows] == ["r00000"]
    spool.append([make_row(2)])
    spool.commit(first)
    assert read_all(spool) == ["r00001", "r00002"]


def test_segments_roll_over_and_keep_their_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=400)
    for i in range(6):
        spool.append([make_row(i, body="x" * 200)])
    assert len(list(tmp_path.glob("segment-*.jsonl"))) == 6
    assert read_all(spool, limit=100) == [f"r{i:05d}" for i in range(6)]


def test_an_uncommitted_chunk_is_read_again_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_row(i) for i in range(4)])
    chunk = spool.read(2)
    assert chunk is not None
    spool.commit(chunk)
    spool.read(2)  # read but never committed: the process "crashed" before the database said yes
    spool.close()
    again = Spool(tmp_path)
    # Committed progress inside a segment is not persisted: a restart replays the whole segment. The insert is
    # keyed on request_id, so the rows stored before the crash are not stored twice.
    assert read_all(again) == [f"r{i:05d}" for i in range(4)]


def test_a_torn_last_line_is_set_aside_and_the_rest_is_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_row(0), make_row(1)])
    spool.close()
    segment = next(tmp_path.glob("segment-*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"request_id": "r00002", "sta')  # the process died in the middle of a write
    again = Spool(tmp_path)
    assert read_all(again) == ["r00000", "r00001"]
    assert (tmp_path / REJECTED_NAME).read_bytes() == b'{"request_id": "r00002", "sta\n'
    assert not again.pending()


def test_a_line_that_is_not_a_row_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([make_row(0)])
    spool.close()
    segment = next(tmp_path.glob("segment-*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'{"not": "a row"}\n' + make_row(1).model_dump_json().encode() + b"\n")
    assert read_all(Spool(tmp_path)) == ["r00000", "r00001"]
    assert (tmp_path / REJECTED_NAME).read_text() == '{"not": "a row"}\n'


def test_new_segments_after_a_restart_sort_after_the_old_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1)
    spool.append([make_row(0)])
    spool.append([make_row(1)])
    spool.close()
    again = Spool(tmp_path, segment_bytes=1)
    again.append([make_row(2)])
    assert read_all(again) == ["r00000", "r00001", "r00002"]


def test_one_process_owns_a_spool_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLocked, match="is in use by another process"):
        Spool(tmp_path)  # flock: a second open file description conflicts, in this process as in another
    spool.close()
    Spool(tmp_path).close()


def test_reject_keeps_refused_rows_on_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.reject([make_row(7)], "value too long")
    assert JournalRow.model_validate_json((tmp_path / REJECTED_NAME).read_text()) == make_row(7)


def test_appending_nothing_creates_no_segment(tmp_path: Path) -> None:
    Spool(tmp_path).append([])
    assert list(tmp_path.glob("segment-*")) == []


def test_spool_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([make_row(1)])
    spool.reject([make_row(2)], "refused")
    files = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert files == ["rejected.jsonl", "segment-000000000001.jsonl", "spool.lock"]
    assert {oct((tmp_path / "spool" / name).stat().st_mode & 0o777) for name in files} == {"0o600"}
    assert oct((tmp_path / "spool").stat().st_mode & 0o777) == "0o700"
