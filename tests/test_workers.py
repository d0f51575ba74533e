"""`serve --workers 2` as real processes: one service to clients and operators whichever worker answers, one view of
the upstreams in every worker, SIGTERM draining both workers, SIGKILL of one worker, a second server on the machine
with the same state directory. Per-user tokens and the journal in the real PostgreSQL, two fake upstreams. Which
worker served a request is read from its own Prometheus file (`counter_<pid>.db` in the server's instance directory's
`metrics/`), so each test can show that both workers took part; tests.worker_clients reaches each worker on its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.rows
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import make_url

from kodify_proxy.env_types import available_cpus, resolve_workers
from kodify_proxy.journal.inflight import TABLE_NAME, WORKER_DIED, read_table
from kodify_proxy.workers import take_slot
from tests.journal_support import fresh_database
from tests.measured import MEASURED
from tests.servers import Server, fake_upstream, kodify_proxy, run_cli, upstreams_yaml
from tests.worker_clients import Pinned, pin_workers, worker_pids

SECTION = "Workers and servers on one machine (tests/test_workers.py)"
TTL = 1.0  # KODIFY_AUTH_CACHE_TTL of these servers
TABBY: dict[str, Any] = {
    "language": "python",
    "segments": {"prefix": "def f():\n    return ", "suffix": "\n", "filepath": "src/a.py"},
}


# --- pure parts --------------------------------------------------------------------------------------------------


def test_auto_is_the_cpus_this_process_may_use() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == available_cpus() and resolve_workers(3) == 3


def test_each_worker_takes_the_lowest_free_slot_and_a_dead_ones_is_taken_again(tmp_path: Path) -> None:
    first, first_fd = take_slot(tmp_path, 2)
    second, second_fd = take_slot(tmp_path, 2)
    assert (first, second) == (0, 1)
    with pytest.raises(Exception, match="All 2 worker slots"):
        take_slot(tmp_path, 2)
    os.close(first_fd)  # the worker holding slot 0 died: the kernel released its lock
    assert take_slot(tmp_path, 2)[0] == 0
    os.close(second_fd)


# --- the pool ------------------------------------------------------------------------------------------------------


@dataclass
class Pool:
    proxy: Server
    upstreams: tuple[Server, Server]
    env: dict[str, str]
    journal_url: str

    @property
    def metrics_dir(self) -> Path:
        return self.proxy.instance_dir / "metrics"

    def served(self, route: str) -> dict[int, dict[str, float]]:
        """Per worker pid: its `kodify_requests_total` for `route`, by status (read from its own file)."""
        found: dict[int, dict[str, float]] = {}
        for path in self.metrics_dir.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            for metric in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
                for sample in metric.samples:
                    if sample.name == "kodify_requests_total" and sample.labels.get("route") == route:
                        by_status = found.setdefault(pid, {})
                        by_status[sample.labels["status"]] = by_status.get(sample.labels["status"], 0) + sample.value
        return found

    def workers(self) -> list[int]:
        assert self.proxy.process is not None
        children = Path(f"/proc/{self.proxy.process.pid}/task/{self.proxy.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]


METRICS_TOKEN = "metrics-token-for-the-workers-test"


def _pool(tmp: Path, upstreams: tuple[Server, Server], database_url: str, db: str, name: str) -> Pool:
    env = {
        "MTSAI_AUTH": "true",
        "AUTH_TYPE": "DB",
        "DB_URL": make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False),
        "USERS_TABLE": f"users_{uuid.uuid4().hex[:8]}",
        "KODIFY_AUTH_CACHE_TTL": str(TTL),
        "LOGS": "True",
        "KODIFY_JOURNAL_URL": db,
        "RUN_MIGRATIONS": "1",
        "KODIFY_JOURNAL_FLUSH_INTERVAL": "0.2",
        "KODIFY_SHUTDOWN_GRACE": "20",
        "KODIFY_METRICS_TOKEN": METRICS_TOKEN,
        # beyond any test's length: only the shared view can make the workers agree (test_one_view_of_the_upstreams)
        "KODIFY_DISCOVERY_INTERVAL": "600",
    }
    config = upstreams_yaml(*(u.url for u in upstreams))
    proxy = kodify_proxy(tmp, config, env={**env, "KODIFY_WORKERS": "2"}, name=name)
    return Pool(proxy.start(timeout=180).wait_workers(2), upstreams, env, db)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("workers-upstreams")
    pair = (fake_upstream(tmp).start(), fake_upstream(tmp).start())
    yield pair
    for server in pair:
        server.stop()


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Server, Server], database_url: str
) -> Iterator[Pool]:
    with fresh_database(database_url, "kodify_workers_test") as db:
        started = _pool(tmp_path_factory.mktemp("workers"), upstreams, database_url, db, "pool")
        yield started
        started.proxy.stop()


def _token(pool: Pool, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "users", "add", name],
        env={**os.environ, **pool.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def _each_on_its_own_connection(count: int, send: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`count` requests, 4 at a time, each on a new connection: the kernel hands them to both workers."""
    with ThreadPoolExecutor(4) as threads:
        return list(threads.map(send, range(count)))


def _journal_rows(url: str, like: str) -> int:
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        row = conn.execute("SELECT count(*) FROM kodify_journal WHERE request_body LIKE %s", (f"%{like}%",)).fetchone()
    return int(row[0]) if row else 0


def _wait_rows(url: str, like: str, expected: int, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    while (found := _journal_rows(url, like)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def _delta(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], status: str) -> dict[int, float]:
    return {pid: after[pid].get(status, 0) - before.get(pid, {}).get(status, 0) for pid in after}


def test_two_workers_are_one_service_and_the_counts_add_up(pool: Pool) -> None:
    token = _token(pool, "counted")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    marker = uuid.uuid4().hex
    calls: dict[str, tuple[str, Any]] = {
        "/v1/completions": ("/v1/completions", {"model": "fake-model", "prompt": f"{marker} c", "max_tokens": 3}),
        "/v1/chat/completions": (
            "/v1/chat/completions",
            {"model": "fake-model", "messages": [{"role": "user", "content": f"{marker} chat"}]},
        ),
        "/tabby/v1/completions": (
            "/tabby/v1/completions",
            {**TABBY, "segments": {**TABBY["segments"], "prefix": f"# {marker}\n"}},
        ),
    }
    before = {route: pool.served(route) for route in calls}
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    metrics_before = httpx.get(pool.proxy.url + "/metrics", headers=scraper).text
    for route, (path, body) in calls.items():

        def send(i: int, path: str = path, body: Any = body) -> httpx.Response:
            return httpx.post(pool.proxy.url + path, json=body, headers=headers, timeout=30)

        assert [r.status_code for r in _each_on_its_own_connection(40, send)] == [200] * 40, route
    time.sleep(0.2)
    for route in calls:
        per_worker = _delta(before[route], pool.served(route), "200")
        assert sum(per_worker.values()) == 40, (route, per_worker)
        assert len([n for n in per_worker.values() if n > 0]) == 2, f"{route}: one worker took all: {per_worker}"
    # /metrics, from whichever worker answers, counts the whole server
    for _ in range(4):
        whole = _scraped(httpx.get(pool.proxy.url + "/metrics", headers={**scraper, "Connection": "close"}).text)
        for route in calls:
            key = ("kodify_requests_total", route, "200")
            assert whole[key] - _scraped(metrics_before).get(key, 0) == 40, route
    # the journal got every worker's rows, once each
    assert _wait_rows(pool.journal_url, marker, 120) == 120
    time.sleep(1)
    assert _journal_rows(pool.journal_url, marker) == 120


def _scraped(text: str) -> dict[tuple[str, str, str], float]:
    """kodify_requests_total by (name, route, status), summed over models."""
    found: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("kodify_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = ("kodify_requests_total", labels["route"].strip('"'), labels["status"].strip('"'))
            found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def test_one_files_keystrokes_reach_one_upstream_from_every_worker(pool: Pool) -> None:
    token = _token(pool, "typist")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    marker = uuid.uuid4().hex
    body = {**TABBY, "segments": {**TABBY["segments"], "prefix": f"# {marker}\nx = "}}
    before = pool.served("/v1/completions")
    sent = _each_on_its_own_connection(
        30, lambda i: httpx.post(pool.proxy.url + "/v1/completions", json=body, headers=headers, timeout=30)
    )
    assert [r.status_code for r in sent] == [200] * 30
    per_worker = _delta(before, pool.served("/v1/completions"), "200")
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker
    counts = sorted(int(httpx.get(u.url + "/_count", params={"contains": marker}).json()) for u in pool.upstreams)
    assert counts == [0, 30]


def test_a_revoked_token_is_refused_by_both_workers_within_the_ttl(pool: Pool) -> None:
    token = _token(pool, "leaver")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

    def chat(i: int) -> httpx.Response:
        return httpx.post(pool.proxy.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    assert {r.status_code for r in _each_on_its_own_connection(20, chat)} == {200}  # cached on both workers
    subprocess.run(
        [sys.executable, "-m", "kodify_proxy.cli", "users", "revoke", "leaver"],
        env={**os.environ, **pool.env},
        check=True,
        capture_output=True,
        timeout=60,
    )
    revoked_at = time.monotonic()
    time.sleep(TTL + 0.3)
    before = pool.served("/v1/chat/completions")
    refused = _each_on_its_own_connection(20, chat)
    assert [r.status_code for r in refused] == [401] * 20, time.monotonic() - revoked_at
    assert all("revoked" in r.json()["error"]["message"] for r in refused)
    per_worker = _delta(before, pool.served("/v1/chat/completions"), "401")
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker


class Streams:
    """`count` chats in flight at once, streamed (each chunk DRIP/20 seconds apart upstream) or not (the answer after
    DRIP seconds), then what each one got: `complete` (to [DONE]), `cut`, or the httpx error that ended it; and the
    status and request id of each one whose response started."""

    def __init__(self, pool: Pool, headers: dict[str, str], count: int, drip: float, stream: bool = True) -> None:
        self.marker, self.outcomes = uuid.uuid4().hex, [""] * count
        self.statuses: list[int | None] = [None] * count
        self.ids: list[str | None] = [None] * count
        self._pool, self._headers, self._drip, self._streamed = pool, headers, drip, stream
        self._threads = [threading.Thread(target=self._stream, args=(i,)) for i in range(count)]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while self._at_upstreams() < count:  # every one of them is in flight
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def _at_upstreams(self) -> int:
        counts = (httpx.get(u.url + "/_count", params={"contains": self.marker}) for u in self._pool.upstreams)
        return sum(int(count.json()) for count in counts)

    def _stream(self, i: int) -> None:
        content = f"DRIP:{self._drip} {self.marker}"
        body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], "stream": self._streamed}
        url = self._pool.proxy.url + "/v1/chat/completions"
        try:
            with httpx.stream("POST", url, json=body, headers=self._headers, timeout=30) as response:
                self.statuses[i], self.ids[i] = response.status_code, response.headers["x-litellm-call-id"]
                lines = [line for line in response.iter_lines() if line]
            whole = response.status_code == 200 and (not self._streamed or lines[-1] == "data: [DONE]")
            self.outcomes[i] = "complete" if whole else "cut"
        except httpx.HTTPError as exc:
            self.outcomes[i] = type(exc).__name__

    def finished(self) -> list[str]:
        for thread in self._threads:
            thread.join(40)
        return self.outcomes

    def sent(self) -> list[tuple[str | None, int | None, str]]:
        """(request id, status, outcome) of each request; no id and no status when its response never started."""
        return list(zip(self.ids, self.statuses, self.outcomes, strict=True))


def _until_every_worker(workers: list[Pinned], holds: Callable[[Pinned], bool], since: float) -> dict[int, float]:
    """Seconds from `since` until `holds` was first true of each worker, polled in turn (a deadline far beyond the
    contract, so a failure shows the times)."""
    found: dict[int, float] = {}
    while len(found) < len(workers) and time.monotonic() - since < 20:
        for worker in workers:
            if worker.pid not in found and holds(worker):
                found[worker.pid] = time.monotonic() - since
        time.sleep(0.005)
    return found


def _upstreams_up(worker: Pinned) -> set[float]:
    text = worker.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    return {float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("kodify_upstream_up{")}


def test_one_view_of_the_upstreams_every_worker_within_a_second(pool: Pool) -> None:
    """Both upstreams die, one request finds it out: every worker's /health, routing and kodify_upstream_up agree
    within a second, without a check of their own (the discovery interval is 600 s); and within a second of the
    upstreams' return. The issue's contract is the one bound asserted; the times are printed."""
    headers = {"Authorization": f"Bearer {_token(pool, 'one-view')}"}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "one view"}]}
    workers = pin_workers(pool.proxy)
    try:
        for upstream in pool.upstreams:
            upstream.kill()
        assert httpx.post(pool.proxy.url + "/v1/chat/completions", json=chat, headers=headers).status_code == 503
        down = _until_every_worker(workers, lambda w: w.get("/health").status_code == 503, time.monotonic())
        assert all(_upstreams_up(w) == {0.0} for w in workers)
        assert all(w.post("/v1/chat/completions", chat, headers).status_code == 503 for w in workers)
        for upstream in pool.upstreams:
            upstream.start(expect_ready=False)
        back_at = _when_answering(pool.upstreams)
        back = _until_every_worker(workers, lambda w: w.get("/health").status_code == 200, back_at)
        MEASURED.add(
            SECTION,
            f"all workers agree: down after {_ms(down)}, back after {_ms(back)} (the slowest of each is the figure)",
        )
        assert len(down) == len(back) == 2 and max(down.values()) < 1 and max(back.values()) < 1, (down, back)
        assert all(w.post("/v1/chat/completions", chat, headers).status_code == 200 for w in workers)
        # /health says 200 once one upstream is back; the other may be seen at the next recheck
        both = _until_every_worker(workers, lambda w: _upstreams_up(w) == {1.0}, back_at)
        assert len(both) == 2, both
    finally:
        for upstream in pool.upstreams:
            if upstream.process is None or upstream.process.poll() is not None:
                upstream.start()
        for worker in workers:
            worker.client.close()


def _when_answering(upstreams: tuple[Server, Server]) -> float:
    """The moment the first upstream answers GET /v1/models again (polled every 5 ms); the other is waited for."""
    first = None
    deadline = time.monotonic() + 60
    while first is None or not all(_answers(u) for u in upstreams):
        assert time.monotonic() < deadline, "the upstreams did not start"
        if first is None and any(_answers(u) for u in upstreams):
            first = time.monotonic()
        time.sleep(0.005)
    return first


def _answers(upstream: Server) -> bool:
    try:
        return httpx.get(upstream.url + "/v1/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_second_server_with_the_same_state_directory_runs_beside_the_first(pool: Pool, tmp_path: Path) -> None:
    """Two servers of one user, on two ports, with default settings (one state directory): both serve, each with its
    own slots, metrics and spools; a third on an address in use is refused in one line, before anything starts."""
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}", "Connection": "close"}
    before = _scraped(httpx.get(pool.proxy.url + "/metrics", headers=scraper).text)
    state = {"KODIFY_STATE_DIR": pool.proxy.env["KODIFY_STATE_DIR"], "KODIFY_WORKERS": "2"}
    config = upstreams_yaml(*(u.url for u in pool.upstreams))
    second = kodify_proxy(tmp_path, config, env={**pool.env, **state}, name="second")
    try:
        second.start(timeout=180).wait_workers(2)
        headers = {"Authorization": f"Bearer {_token(pool, 'two-servers')}", "Connection": "close"}
        body = {"model": "fake-model", "prompt": "two servers", "max_tokens": 2}
        for server in (pool.proxy, second):

            def send(i: int, url: str = server.url) -> httpx.Response:
                return httpx.post(url + "/v1/completions", json=body, headers=headers)

            assert [r.status_code for r in _each_on_its_own_connection(8, send)] == [200] * 8
        key = ("kodify_requests_total", "/v1/completions", "200")
        assert _scraped(httpx.get(pool.proxy.url + "/metrics", headers=scraper).text)[key] == before.get(key, 0) + 8
        assert _scraped(httpx.get(second.url + "/metrics", headers=scraper).text)[key] == 8
        for server in (pool.proxy, second):
            own = server.instance_dir
            assert (own / "litellm_config.yaml").is_file() and (own / "journal-spool" / "spool.lock").is_file()
            files = {int(path.stem.split("_")[1]) for path in (own / "metrics").glob("counter_*.db")}
            assert files and files <= set(worker_pids(server)), (files, worker_pids(server))
        MEASURED.add(
            SECTION, "two servers, one state directory:\n" + _startup_lines(pool.proxy) + "\n" + _startup_lines(second)
        )
        _refused_on(second, second.env)
        _refused_on(second, {**second.env, "KODIFY_STATE_DIR": str(tmp_path / "elsewhere")})
    finally:
        second.stop()


def _refused_on(server: Server, env: Mapping[str, str]) -> None:
    """`serve` on `server`'s address exits 2 with one line naming --port, and no traceback."""
    config = server.args[list(server.args).index("--config") + 1]
    args = ("serve", "--config", config, "--host", "127.0.0.1", "--port", str(server.port), "--workers", "2")
    refused = run_cli(*args, env={**os.environ, **env})
    MEASURED.add(SECTION, f"refused: exit {refused.returncode}: {refused.stderr.strip()}")
    assert refused.returncode == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr
    assert re.fullmatch(
        rf"error: --port {server.port}: .+; stop it, or give this server another --port.*\n", refused.stderr
    )


def _startup_lines(server: Server) -> str:
    wanted = ("Serving with", "Uvicorn running on", "Journal on:", "Application startup complete")
    return "\n".join(line for line in server.log_text().splitlines() if any(w in line for w in wanted))


def _busiest_worker(pool: Pool, workers: list[int]) -> tuple[int, int]:
    """The worker with the most requests in its journal's in-flight table (wherever the state dir keeps it), and
    how many: killing it is sure to cut requests."""
    held = {pid: 0 for pid in workers}
    for path in Path(pool.proxy.env["KODIFY_STATE_DIR"]).rglob(TABLE_NAME):
        leftovers = read_table(path.read_bytes())
        if leftovers.pid in held:
            held[leftovers.pid] = len(leftovers.records)
    return max(held.items(), key=lambda item: item[1])


def _chat_rows(url: str, user: str, expected: int, within: float = 60.0) -> list[dict[str, Any]]:
    """The journal's chat rows of `user`, once there are `expected` (or `within` seconds passed)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    query = "SELECT * FROM kodify_journal WHERE user_id = %s AND route = '/v1/chat/completions'"
    deadline = time.monotonic() + within
    while True:
        with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            rows = cursor.execute(query, (user,)).fetchall()
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_sigkill_of_one_worker_is_replaced_and_every_request_it_had_is_journaled(pool: Pool) -> None:
    token = _token(pool, "through-a-crash")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    workers = pool.workers()
    assert len(workers) == 2
    began = time.monotonic()
    streams = Streams(pool, headers, 8, drip=8)
    waiting = Streams(pool, headers, 4, drip=8, stream=False)  # no response yet when the worker dies
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "just before"}]}
    answered = _each_on_its_own_connection(  # ended just before: rows perhaps still in a writer's memory
        6, lambda i: httpx.post(pool.proxy.url + "/v1/chat/completions", json=chat, headers=headers, timeout=30)
    )
    assert [r.status_code for r in answered] == [200] * 6
    victim, held = _busiest_worker(pool, workers)
    os.kill(victim, signal.SIGKILL)
    killed_after = time.monotonic() - began
    finished = Counter(streams.finished() + waiting.finished())
    # the killed worker's clients lose their request (a cut connection), every other one completes
    assert finished["complete"] >= 1 and sum(finished.values()) == 12, finished
    assert set(finished) <= {"complete", "RemoteProtocolError", "ReadError", "cut"}, finished
    deadline = time.monotonic() + 60
    while len(replaced := pool.workers()) < 2 or victim in replaced:
        assert time.monotonic() < deadline, "no replacement worker"
        time.sleep(0.2)
    ok = _each_on_its_own_connection(
        10,
        lambda i: httpx.post(
            pool.proxy.url + "/v1/completions",
            json={"model": "fake-model", "prompt": "after", "max_tokens": 2},
            headers=headers,
            timeout=60,
        ),
    )
    assert [r.status_code for r in ok] == [200] * 10
    # a row for every request sent, once each: the killed worker's rebuilt by its replacement
    rows = {row["request_id"]: row for row in _chat_rows(pool.journal_url, "through-a-crash", 18)}
    died = Counter(row["status"] for row in rows.values() if row["error_type"] == WORKER_DIED)
    MEASURED.add(
        SECTION, f"SIGKILL after {killed_after:.1f} s of a worker holding {held} of 18 requests: {dict(finished)};"
    )
    MEASURED.add(SECTION, f"  {len(rows)} rows for 18 requests; {WORKER_DIED} rows by status: {dict(died)}")
    assert len(rows) == 18
    sent = streams.sent() + waiting.sent()
    for request_id, status, outcome in sent:
        if request_id is not None:  # the client got a status: the row has it, and says whether the worker died
            row = rows[request_id]
            assert row["status"] == status, row
            if outcome == "complete":  # its whole row, or rebuilt if its worker died before spooling it
                assert row["error_type"] is None or _ended(row), row
            else:  # cut mid-response
                assert row["error_type"] == WORKER_DIED and not _ended(row), row
    unanswered = [row for row in rows.values() if row["status"] is None]
    assert len(unanswered) == len([s for s in sent if s[0] is None])  # no status line: the row has none either
    for row in rows.values():
        assert row["model"] == "fake-model" and row["started_at"] is not None
        assert row["error_type"] in (None, WORKER_DIED), row
    for response in answered:
        row = rows[response.headers["x-litellm-call-id"]]
        assert row["status"] == 200 and (row["error_type"] is None or _ended(row)), row


def _ended(row: dict[str, Any]) -> bool:
    """A row rebuilt for a request that had ended (whole answer sent) before its worker died with its row unspooled."""
    return row["error_type"] == WORKER_DIED and "after the response had ended" in row["error_message"]


def test_sigterm_drains_both_workers(tmp_path: Path, upstreams: tuple[Server, Server], database_url: str) -> None:
    with fresh_database(database_url, "kodify_workers_test") as db:
        pool = _pool(tmp_path, upstreams, database_url, db, "draining")
        token = _token(pool, "draining")
        headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        streams = Streams(pool, headers, 10, drip=2)
        assert pool.proxy.process is not None
        os.kill(pool.proxy.process.pid, signal.SIGTERM)
        assert streams.finished() == ["complete"] * 10
        assert pool.proxy.wait_exit(60) == 0
        per_worker = pool.served("/v1/chat/completions")
        assert len([pid for pid, counts in per_worker.items() if counts.get("200")]) == 2, per_worker
        assert _journal_rows(db, streams.marker) == 10  # each worker flushed its rows before it exited
        tables = list(Path(pool.proxy.env["KODIFY_STATE_DIR"]).rglob(TABLE_NAME))
        assert len(tables) == 2 and [read_table(t.read_bytes()).records for t in tables] == [(), ()]  # none died
        log = pool.proxy.log_text()
        assert "[worker 1]" in log and "[worker 2]" in log and "was sent SIGTERM" not in log
        assert f"Uvicorn running on http://127.0.0.1:{pool.proxy.port} with 2 workers" in log  # as with one process
        assert log.count("Application startup complete.") == 2
        # what must happen once happened once, before the workers: migrations, the master key, LiteLLM's config
        assert log.count("Journal schema is at revision") == 1
        assert log.count("generated one for the LiteLLM admin API") == 1
        assert log.count("Serving models:") == 1 and log.count("Serving with 2 worker processes") == 1


def _ms(times: dict[int, float]) -> str:
    return ", ".join(f"{seconds * 1000:.0f} ms" for seconds in sorted(times.values()))
