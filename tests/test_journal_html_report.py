"""`kodify-proxy usage --html`: the page's numbers exact on PostgreSQL and SQLite, the command as a process, and the
page in a real headless Chromium (every chart drawn, a silent console, no request to a network, a screenshot)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from kodify_proxy.database import parse_url
from kodify_proxy.journal.commands import parse_since
from kodify_proxy.journal.database import journal_engine
from kodify_proxy.journal.html_report import (
    DayCount,
    GroupAcceptance,
    ModelTokens,
    ReportData,
    RouteLatency,
    UserRequests,
    load_report,
    render_report_html,
)
from kodify_proxy.journal.record import JournalRow
from kodify_proxy.journal.report import Acceptance, UsageRow
from tests.journal_support import fill_journal, filled_journal
from tests.servers import REPO

BOB = '</script><b>bob</b> & "co"'  # a user name that must show as written, and break nothing
CHAT, COMPLETIONS, EVENTS, DEV_DATA = "/v1/chat/completions", "/v1/completions", "/v1/events", "/v1/dev-data"
CHARTS = ["requests", "latency", "tokens", "acceptance", "users", "user_acceptance", "model_acceptance"]


def row(rid: str, when: str, user: str, route: str, latency: float, **fields: object) -> JournalRow:
    """One journaled request on 2025-12-`when` (DDTHH:MM, UTC)."""
    return JournalRow(
        request_id=rid,
        started_at=datetime.fromisoformat(f"2025-12-{when}:00+00:00"),
        user_id=user,
        method="POST",
        route=route,
        status=400 if fields.get("error_type") else 200,
        latency_ms=latency,
        **fields,  # type: ignore[arg-type]
    )


ROWS = [
    row("c1", "01T09:00", "alice", CHAT, 100, model="m1", stream=True, ttft_ms=20,
        prompt_tokens=10, completion_tokens=5),
    row("c2", "01T10:00", "alice", CHAT, 200, model="m1", stream=True, ttft_ms=40,
        prompt_tokens=20, completion_tokens=10),
    row("c3", "01T11:00", BOB, CHAT, 300, model="m2", prompt_tokens=30, completion_tokens=15),
    row("c4", "02T09:00", BOB, CHAT, 10, model="m2", error_type="invalid_request_error"),
    # Tabby completions; t2's ttft does not count: it did not stream.
    row("t1", "02T10:00", "alice", COMPLETIONS, 50, model="m1", language="python", completion_id="cmpl-1",
        stream=True, ttft_ms=10, prompt_tokens=40, completion_tokens=8),
    row("t2", "02T10:01", BOB, COMPLETIONS, 70, model="m2", language="rust", completion_id="cmpl-2",
        ttft_ms=999, prompt_tokens=60, completion_tokens=12),
    row("t3", "02T10:02", "alice", COMPLETIONS, 60, model="m1", language="python", completion_id="cmpl-3",
        prompt_tokens=50, completion_tokens=9),
    # Their events name no model or language: the completion's count.
    row("e1", "02T10:03", "alice", EVENTS, 1, completion_id="cmpl-1", event_type="view"),
    row("e2", "02T10:04", "alice", EVENTS, 2, completion_id="cmpl-1", event_type="select"),
    row("e3", "02T10:05", BOB, EVENTS, 3, completion_id="cmpl-2", event_type="view"),
    row("e4", "02T10:06", "alice", EVENTS, 4, completion_id="cmpl-3", event_type="view"),
    row("e5", "02T10:07", BOB, EVENTS, 5, completion_id="cmpl-2", event_type="dismiss"),
    # Continue's events carry their own model and language.
    row("d1", "02T10:08", BOB, DEV_DATA, 2, model="m2", language="typescript", completion_id="cont-1",
        event_type="autocomplete", event_schema="0.2.0", client="Continue", client_version="1.0.5",
        suggestion="autocomplete", shown=True, accepted=True),
    row("d2", "02T10:09", "alice", DEV_DATA, 4, model="m1", completion_id="cont-2", event_type="nextEditOutcome",
        event_schema="0.2.0", client="Continue", suggestion="next_edit", shown=True, accepted=False, aborted=False),
]  # fmt: skip
EXPECTED = ReportData(
    since=None,
    total=UsageRow("TOTAL", 14, 1, 210, 59, 7.5, 235.0, shown=4, accepted=2, next_edits_shown=1, next_edits_accepted=0),
    days=(DayCount("2025-12-01", 3, 0), DayCount("2025-12-02", 11, 1)),
    routes=(
        RouteLatency(CHAT, 150.0, 285.0, 30.0, 39.0),
        RouteLatency(COMPLETIONS, 60.0, 69.0, 10.0, 10.0),
        RouteLatency(DEV_DATA, 3.0, 3.9, None, None),
        RouteLatency(EVENTS, 3.0, 4.8, None, None),
    ),
    models=(ModelTokens("m1", 120, 32), ModelTokens("m2", 90, 27)),  # the Tabby events (no model) left out
    languages=(
        GroupAcceptance("-", Acceptance(0, 0, 1, 0)),  # the next edit: Continue's noCode level sends no file
        GroupAcceptance("python", Acceptance(2, 1)),
        GroupAcceptance("rust", Acceptance(1, 0)),
        GroupAcceptance("typescript", Acceptance(1, 1)),
    ),
    users=(UserRequests("alice", 8, 0), UserRequests(BOB, 6, 1)),
    user_acceptance=(GroupAcceptance("alice", Acceptance(2, 1, 1, 0)), GroupAcceptance(BOB, Acceptance(2, 1))),
    model_acceptance=(GroupAcceptance("m1", Acceptance(2, 1, 1, 0)), GroupAcceptance("m2", Acceptance(2, 1))),
)
EMPTY = ReportData(None, UsageRow("TOTAL", 0, 0, 0, 0, None, None), (), (), (), (), ())


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def journal_url(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with filled_journal(request.param, ROWS, database_url, tmp_path_factory.mktemp("html-report")) as url:
        yield url


def test_load_report(journal_url: str) -> None:
    engine = journal_engine(parse_url(journal_url))
    try:
        assert load_report(engine) == EXPECTED
    finally:
        engine.dispose()


def test_load_report_since(journal_url: str) -> None:
    engine = journal_engine(parse_url(journal_url))
    try:
        data = load_report(engine, parse_since("2025-12-02"))
    finally:
        engine.dispose()
    assert (data.since, data.total.requests, data.days) == (
        parse_since("2025-12-02"),
        11,
        (DayCount("2025-12-02", 11, 1),),
    )
    assert data.routes == (RouteLatency(CHAT, 10.0, 10.0, None, None), *EXPECTED.routes[1:])
    assert data.users == (UserRequests("alice", 6, 0), UserRequests(BOB, 5, 1))


def test_the_page_shows_names_as_written_and_notes_an_empty_journal() -> None:
    page, empty = render_report_html(EXPECTED), render_report_html(EMPTY)
    for html in (page, empty):
        assert re.findall(r'<section class="chart" id="chart-(\w+)">', html) == CHARTS
        assert html.count("<script") == html.count("</script>") == 2 + len(CHARTS)  # no name closed one early
        assert "plotly.js v" in html and "<script src" not in html
    assert BOB not in page and "<b>bob" not in page
    assert (
        "All requests: 14 (1 with an error), 210 prompt and 59 completion tokens; 4 autocompletions shown, 2 "
        "accepted; 1 next edits shown, 0 accepted." in page
    )
    assert "no requests for this period" in empty and "no requests for this period" not in page
    since = render_report_html(dataclasses.replace(EMPTY, since=parse_since("2025-12-02T08:30")))
    assert "Requests since 2025-12-02 08:30 UTC: 0 (0 with an error)" in since


def run_usage_html(url: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kodify-proxy usage --html PAGE` as its own process, on the journal at `url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGS", "KODIFY_JOURNAL"))}
    return subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "usage", "--html", str(page), *args],
        env={**env, "KODIFY_JOURNAL_URL": url, "PYTHONPATH": str(REPO)},
        cwd=page.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_usage_command_writes_a_self_contained_page(journal_url: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    done = run_usage_html(journal_url, page, "--since", "2025-12-02")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"usage report written to {page}\n"
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Requests since 2025-12-02 00:00 UTC: 11 (1 with an error)" in html
    assert not re.search(r"""src=["']?(https?:)?//""", html, re.IGNORECASE)  # no script or image from elsewhere
    assert not re.search(r"""<link[^>]*href=["']?(https?:)?//""", html, re.IGNORECASE)


@dataclass(frozen=True)
class Browsed:
    """What headless Chromium made of a page: the DOM after its scripts ran, its log, its requests, a screenshot."""

    dom: str
    log: str
    page_requests: list[str]
    screenshot: Path


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=NetworkTimeServiceQuerying",  # else it asks a Google server for the time
    # Chromium's own calls no flag stops (sign-in's ListAccounts, the updater) then resolve nowhere: no DNS, no
    # connection leaves the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked the network for (Chromium's own calls have no origin; file:// pages are 'null')."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    started = [e["params"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})]
    return [p["url"] for p in started if p.get("initiator") != "not an origin"]


def browse(page: Path, tmp: Path) -> Browsed:
    """Open `page` in a fresh headless Chromium: dump the DOM and take a 1400x2400 screenshot."""
    screenshot, net_log = tmp / f"{page.stem}.png", tmp / f"{page.stem}-net-log.json"
    args = [
        "/usr/bin/chromium",
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp / f'{page.stem}-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=10000",
        "--window-size=1400,2400",
        f"--screenshot={screenshot}",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return Browsed(done.stdout, done.stderr, page_requests(net_log), screenshot)


def _png_rows(path: Path) -> Iterator[bytes]:
    """The pixel rows of an 8-bit RGB(A) PNG, unfiltered (stdlib only: the tests need no imaging library)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    chunks: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    stride, raw = width * bpp, zlib.decompress(chunks[b"IDAT"])
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            else:  # Paeth
                p = left + up - corner
                near = min((abs(p - left), 0, left), (abs(p - up), 1, up), (abs(p - corner), 2, corner))[2]
                line[i] = (line[i] + near) & 255
        previous = line
        yield bytes(line[i : i + 3] for i in range(0, stride, bpp)) if False else bytes(line)


def png_size_and_colours(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and how many distinct colours (of every 5th pixel) a PNG shows."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    bpp = 3 if path.read_bytes()[25] == 2 else 4
    colours = {bytes(line[i : i + 3]) for line in _png_rows(path) for i in range(0, len(line), 5 * bpp)}
    return (width, height), len(colours)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The page of a filled SQLite journal and that of an empty one, each written by the command."""
    made = {}
    for name, rows in (("filled", ROWS), ("empty", [])):
        folder = tmp_path_factory.mktemp(f"page-{name}")
        url = f"sqlite:///{folder / 'journal.db'}"
        fill_journal(url, rows)
        done = run_usage_html(url, folder / f"{name}.html")
        assert done.returncode == 0, done.stderr
        made[name] = folder / f"{name}.html"
    return made


@pytest.mark.parametrize("which", ["filled", "empty"])
def test_the_page_in_chromium(pages: dict[str, Path], which: str, tmp_path: Path) -> None:
    browsed = browse(pages[which], tmp_path)
    print(f"screenshot of the {which} page: {browsed.screenshot}")
    charts = re.findall(r'<section class="chart" id="chart-(\w+)">(.*?)</section>', browsed.dom, re.DOTALL)
    assert [name for name, _ in charts] == CHARTS
    assert [name for name, body in charts if '<svg class="main-svg"' not in body] == []  # plotly drew every chart
    assert '<pre id="page-errors"></pre>' in browsed.dom  # no script error, failed load or refused fetch
    assert [line for line in browsed.log.splitlines() if ":CONSOLE" in line] == []  # the console stayed silent
    assert browsed.page_requests == []
    size, colours = png_size_and_colours(browsed.screenshot)
    assert size == (1400, 2400) and colours > 10, f"{browsed.screenshot}: {colours} colours"
    if which == "filled":
        assert '&lt;/script&gt;&lt;b&gt;bob&lt;/b&gt; &amp; "co"' in browsed.dom and "<b>bob" not in browsed.dom
    else:
        assert "no requests for this period" in browsed.dom
