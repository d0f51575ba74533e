"""The in-flight table: what a worker is serving, in a file its death leaves behind, so no request goes unjournaled.

A row is written when a request ends and spooled up to KODIFY_JOURNAL_FLUSH_INTERVAL later, so a worker killed
mid-request (SIGKILL, the OOM killer, a crash) would take with it its requests in flight and the rows still in its
writer's memory. Each worker keeps a table of fixed-size slots in its spool directory, mapped shared into memory: a
write to it is in the kernel's page cache at once and outlives the process (not the machine; an fsync per request
would cost far more than the request). A request takes a slot when it begins and notes its user and model, its
status when the response starts and its end; its slot is freed once its row is in the spool. Whoever next owns the
directory (the worker that replaces a dead one, or the next start) turns what is left into `worker_died` rows.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from kodify_proxy.exchange import Exchange
from kodify_proxy.journal.record import JournalRow
from kodify_proxy.journal.spool import Spool, SpoolLocked, orphan_directories

log = logging.getLogger("kodify_proxy.journal")

TABLE_NAME = "inflight.slots"
SLOTS = 4096  # requests in flight or ended and not yet spooled, per worker; beyond, requests go unrecorded
SLOT_BYTES = 1024
HEADER_BYTES = 4096  # a page of its own: the owner and its last sign of life
WORKER_DIED = "worker_died"
_MAGIC = b"kodify-inflight1"
_HEADER = struct.Struct("<16sIIId")  # magic, slot bytes, slots, owner pid, last sign of life (epoch seconds)
_BEAT_AT = 28  # offset of the last sign of life in the header
FREE, OPEN, ENDED = 0, 1, 2
# A slot: state, stream, status (0: none yet), the request's bytes, when it started, its latency (once ended) and
# when its response started (epoch seconds, 0: not yet), then the byte length of each text field and the fields,
# each cut to its room (where a UTF-8 character may be split: decoding drops the piece).
_FIXED = struct.Struct("<BBHIddd")
TEXTS = (("request_id", 64), ("method", 16), ("route", 320), ("user_id", 192), ("key_alias", 128), ("model", 192))
_LENGTHS = struct.Struct(f"<{len(TEXTS)}H")
_LENGTHS_AT = _FIXED.size
# What begin writes in one go (all but the state byte: the numbers, every length, the first three fields, padded),
# and what identify writes: the last three fields, then their lengths. One pack_into each is the cheap way to write.
_BEGUN = struct.Struct(f"<BHIddd{len(TEXTS)}H" + "".join(f"{room}s" for _, room in TEXTS[:3]))
_WHO = struct.Struct("<" + "".join(f"{room}s" for _, room in TEXTS[3:]))
_WHO_LENGTHS = struct.Struct("<3H")
_WHO_LENGTHS_AT = _LENGTHS_AT + 3 * 2  # after the first three lengths
_ID_ROOM, _METHOD_ROOM, _ROUTE_ROOM, _USER_ROOM, _ALIAS_ROOM, _MODEL_ROOM = (room for _, room in TEXTS)
_STATUS_AT, _BYTES_AT, _LATENCY_AT, _RESPONDED_AT = 2, 4, 16, 24
_U16, _U32, _F64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<d")


def _layout() -> dict[str, int]:
    """Each text field's offset in a slot."""
    offsets, at = {}, _LENGTHS_AT + _LENGTHS.size
    for name, room in TEXTS:
        offsets[name] = at
        at += room
    if at > SLOT_BYTES or offsets["user_id"] != 1 + _BEGUN.size:
        raise ValueError(f"the in-flight record's layout is wrong: {offsets}, {at} bytes of {SLOT_BYTES}")
    return offsets


_OFFSETS = _layout()


@dataclass(frozen=True)
class Record:
    """What a slot holds of one request."""

    state: int
    request_id: str
    started: float  # epoch seconds
    method: str = ""
    route: str = ""
    user_id: str = ""
    key_alias: str = ""
    model: str = ""
    stream: bool = False
    status: int | None = None
    request_bytes: int = 0
    latency_ms: float | None = None  # once ended
    responded: float | None = None  # epoch seconds, once the response started

    def last_seen(self) -> float:
        """The last moment this record shows its worker alive."""
        ended = self.started + self.latency_ms / 1000 if self.latency_ms is not None else 0.0
        return max(self.started, self.responded or 0.0, ended)


def encode(record: Record) -> bytes:
    """A slot's bytes for `record`, laid out as the table writes them (in two steps there: begin, identify)."""
    data = bytearray(SLOT_BYTES)
    texts = [str(getattr(record, name)).encode(errors="replace") for name, _ in TEXTS]
    lengths = [min(len(text), room) for text, (_, room) in zip(texts, TEXTS, strict=True)]
    numbers = (record.status or 0, record.request_bytes, record.started, record.latency_ms or 0.0)
    _BEGUN.pack_into(data, 1, record.stream, *numbers, record.responded or 0.0, *lengths, *texts[:3])
    _WHO.pack_into(data, _OFFSETS["user_id"], *texts[3:])
    data[0] = record.state
    return bytes(data)


def decode(slot: bytes) -> Record | None:
    """The record in a slot's bytes; None for a free slot (or one whose begin never finished)."""
    state, stream, status, request_bytes, started, latency, responded = _FIXED.unpack_from(slot, 0)
    if state not in (OPEN, ENDED):
        return None
    lengths = _LENGTHS.unpack_from(slot, _LENGTHS_AT)
    texts = {
        name: bytes(slot[_OFFSETS[name] : _OFFSETS[name] + min(length, room)]).decode("utf-8", "ignore")
        for (name, room), length in zip(TEXTS, lengths, strict=True)
    }
    return Record(
        state=state,
        stream=bool(stream),
        status=status or None,
        request_bytes=request_bytes,
        started=started,
        latency_ms=latency if state == ENDED else None,
        responded=responded or None,
        **texts,
    )


class InflightTable:
    """One worker's slots, mapped shared from `path`. The event loop takes and writes slots; the journal writer's
    thread frees them once their rows are spooled (each step is one atomic list or dict operation under the GIL)."""

    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # 0600: it names users and paths, as the spool does
        try:
            os.ftruncate(fd, 0)  # empty: every slot free (a hole in the file, filled as slots are used)
            os.ftruncate(fd, HEADER_BYTES + slots * SLOT_BYTES)
            self._map = mmap.mmap(fd, HEADER_BYTES + slots * SLOT_BYTES)
        finally:
            os.close(fd)
        _HEADER.pack_into(self._map, 0, _MAGIC, SLOT_BYTES, slots, os.getpid(), time.time())
        self.path = path
        self.slots = slots
        self._free = list(range(slots - 1, -1, -1))  # a stack, lowest first: the same few pages stay in use
        self._held: dict[str, int] = {}
        self.unrecorded = 0  # requests that found every slot taken
        self._full = False

    def begin(self, exchange: Exchange) -> int:
        """A slot for a request that begins (-1 when all are taken: it goes unrecorded, and is counted)."""
        try:
            index = self._free.pop()
        except IndexError:
            return self._no_slot()
        at, data = HEADER_BYTES + index * SLOT_BYTES, self._map
        request_id, method = exchange.request_id.encode(errors="replace"), exchange.method.encode(errors="replace")
        route = exchange.path.encode(errors="replace")
        lengths = min(len(request_id), _ID_ROOM), min(len(method), _METHOD_ROOM), min(len(route), _ROUTE_ROOM)
        started = exchange.started_at.timestamp()
        # struct pads each field to its room, or cuts it (decoding drops a character cut in two)
        _BEGUN.pack_into(data, at + 1, 0, 0, 0, started, 0.0, 0.0, *lengths, 0, 0, 0, request_id, method, route)
        data[at] = OPEN  # last: a begin cut short leaves the slot free, never half a record
        self._held[exchange.request_id] = index
        self._full = False
        return index

    def identify(self, exchange: Exchange) -> None:
        """The request's user, key alias, model and size, once auth and the body are done."""
        at, data = HEADER_BYTES + exchange.slot * SLOT_BYTES, self._map
        user = (exchange.user_id or "").encode(errors="replace")
        alias = (exchange.key_alias or "").encode(errors="replace")
        model = (exchange.model or "").encode(errors="replace")
        _WHO.pack_into(data, at + _OFFSETS["user_id"], user, alias, model)
        lengths = min(len(user), _USER_ROOM), min(len(alias), _ALIAS_ROOM), min(len(model), _MODEL_ROOM)
        _WHO_LENGTHS.pack_into(data, at + _WHO_LENGTHS_AT, *lengths)  # after the bytes they measure
        _U32.pack_into(data, at + _BYTES_AT, min(len(exchange.request_body), 0xFFFFFFFF))

    def respond(self, exchange: Exchange) -> None:
        """The status the client is getting (the response has started), and whether it is an event stream."""
        at, data = HEADER_BYTES + exchange.slot * SLOT_BYTES, self._map
        data[at + 1] = exchange.stream or exchange.content_type.startswith("text/event-stream")
        _U16.pack_into(data, at + _STATUS_AT, exchange.status or 0)
        _F64.pack_into(data, at + _RESPONDED_AT, time.time())

    def end(self, exchange: Exchange, latency_ms: float) -> None:
        """The response is over: the status the client saw in the end, and how long it took."""
        at, data = HEADER_BYTES + exchange.slot * SLOT_BYTES, self._map
        _U16.pack_into(data, at + _STATUS_AT, exchange.final_status())
        _F64.pack_into(data, at + _LATENCY_AT, latency_ms)
        data[at] = ENDED

    def release(self, rows: Iterable[JournalRow]) -> None:
        """These rows are in the spool: their slots are free again (rows without one are skipped)."""
        for row in rows:
            index = self._held.pop(row.request_id, None)
            if index is not None:
                self._map[HEADER_BYTES + index * SLOT_BYTES] = FREE  # before it can be taken again
                self._free.append(index)

    def beat(self) -> None:
        """A sign of life: the end time a dead worker's unfinished requests are given is its last one."""
        _F64.pack_into(self._map, _BEAT_AT, time.time())

    def in_use(self) -> int:
        """Slots taken."""
        return len(self._held)

    def close(self) -> None:
        """No new slots (shut-down); slots still taken stay in the file, for the next start to journal."""
        self._free = []

    def _no_slot(self) -> int:
        self.unrecorded += 1
        if not self._full:
            self._full = True
            log.warning(
                "Journal: all %d in-flight slots of %s are taken; requests go unrecorded until one is free (were "
                "this worker to die, their rows would be lost)",
                self.slots,
                self.path,
            )
        return -1


@dataclass(frozen=True)
class Leftovers:
    """What a table's last owner left: its pid, its last sign of life (epoch seconds) and its records."""

    pid: int
    last_alive: float
    records: tuple[Record, ...]


def read_table(data: bytes) -> Leftovers:
    """The records of a table file's bytes (none for a file that is empty, cut short or not a table)."""
    if len(data) < HEADER_BYTES or data[: len(_MAGIC)] != _MAGIC:
        return Leftovers(0, 0.0, ())
    _, slot_bytes, slots, pid, beat = _HEADER.unpack_from(data, 0)
    if slot_bytes != SLOT_BYTES:  # the magic names this layout, and the layout this size: the header is damaged
        return Leftovers(0, 0.0, ())
    found = []
    for index in range(slots):
        at = HEADER_BYTES + index * slot_bytes
        if at + slot_bytes > len(data):
            break
        if data[at] != FREE:
            record = decode(data[at : at + slot_bytes])
            if record is not None:
                found.append(record)
    return Leftovers(pid, max([beat, *(record.last_seen() for record in found)]), tuple(found))


def died_row(record: Record, pid: int, last_alive: float) -> JournalRow:
    """The `worker_died` row of a record a dead worker left."""
    ended = record.latency_ms is not None
    latency = record.latency_ms if ended else max(0.0, last_alive - record.started) * 1000
    return JournalRow(
        request_id=record.request_id,
        started_at=datetime.fromtimestamp(record.started, UTC),
        user_id=record.user_id or None,
        key_alias=record.key_alias or None,
        method=record.method or "?",
        route=record.route or "?",
        model=record.model or None,
        status=record.status,
        error_type=WORKER_DIED,
        error_message=died_message(record, pid),
        stream=record.stream,
        latency_ms=round(latency or 0.0, 3),
        request_bytes=record.request_bytes,
    )


def died_message(record: Record, pid: int) -> str:
    """What happened to the request, for the administrator reading its row."""
    worker = f"The worker process (pid {pid}) serving this request died (killed, e.g. by SIGKILL or the OOM killer, "
    worker += "or crashed; with several workers the server log names the signal)"
    lost = "; this row was rebuilt from the record the request left, without its upstream, tokens or bodies"
    if record.state == ENDED:
        return f"{worker} after the response had ended (status {record.status}), before its row was spooled{lost}"
    if record.status is None:
        return f"{worker}: its response had not started, the client got no answer (its connection was cut){lost}"
    return (
        f"{worker}: the client got status {record.status} and part of the response, then its connection was cut{lost}"
    )


def recover(path: Path, spool: Spool) -> int:
    """The rows of the records left in the table at `path` appended to `spool` (durably, before anything else may
    change the table; rows the dead worker had spooled are older there, so theirs win on the request id); how many.
    """
    try:
        leftovers = read_table(path.read_bytes())
    except FileNotFoundError:
        return 0
    leftovers = replace(leftovers, last_alive=min(leftovers.last_alive, time.time()))  # not after now, whatever it says
    rows = [row for record in leftovers.records if (row := _died_row_or_none(record, leftovers)) is not None]
    spool.append(rows)
    if rows:
        log.warning(
            "Journal: %d requests of worker process %d were unfinished or unspooled when it died; journaled as %s",
            len(rows),
            leftovers.pid,
            WORKER_DIED,
        )
    return len(rows)


def _died_row_or_none(record: Record, leftovers: Leftovers) -> JournalRow | None:
    """The record's row; None (and an error logged) for a record no row can be made of: a file damaged otherwise
    than by its writer's death (which leaves whole records), e.g. a time beyond any date."""
    try:
        return died_row(record, leftovers.pid, leftovers.last_alive)
    except (ValueError, OverflowError, OSError) as exc:  # a pydantic ValidationError is a ValueError
        log.error("Journal: an in-flight record of worker process %d makes no row (%s); skipped", leftovers.pid, exc)
        return None


def open_table(spool: Spool) -> InflightTable:
    """The in-flight table of `spool`'s directory (whose lock this process holds), after journaling what the
    previous owner left in it."""
    path = spool.directory / TABLE_NAME
    recover(path, spool)
    return InflightTable(path)


def recover_orphans(base: Path, workers: int) -> int:
    """Journal the tables of `base/worker-N` directories no worker of this run owns (N >= `workers`: an earlier run
    had more) into `base`'s spool, and remove them. Run before any worker starts, after `spool.adopt_orphans` (so
    the rows those workers did spool come first)."""
    return recover_tables(base, orphan_directories(base, workers))


def recover_tables(base: Path, directories: Iterable[Path]) -> int:
    """Journal the in-flight tables left in `directories` (spools of workers or servers that are gone) into `base`'s
    spool, and remove them; each directory is locked while it is read, and one still locked (a running server's) is
    left to its owner. How many rows."""
    tables = [path / TABLE_NAME for path in directories if (path / TABLE_NAME).exists()]
    if not tables:
        return 0
    recovered = 0
    owner = Spool(base)
    try:
        for table in tables:
            try:
                lock = Spool(table.parent)
            except SpoolLocked:
                continue
            try:
                recovered += recover(table, owner)
                table.unlink()
            finally:
                lock.close()
    finally:
        owner.close()
    return recovered
