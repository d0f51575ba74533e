"""`serve` and `render-config`: what is done once before serving (wait for and discover upstreams, migrations, the
master key, the LiteLLM config written), the app one server process runs, and running it with uvicorn.

With `serve --workers N` (kodify_proxy.workers) `prepare_launch` runs once in the supervising process and
`build_app` once in each worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import select
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from kodify_proxy import tls
from kodify_proxy.errors import StartupError
from kodify_proxy.instance import Instance
from kodify_proxy.litellm_config import build_litellm_config, load_template, upstream_key_env
from kodify_proxy.settings import Settings
from kodify_proxy.upstream_board import UpstreamBoard, observe
from kodify_proxy.upstream_monitor import UpstreamMonitor
from kodify_proxy.upstreams import KodifyConfig, UpstreamState, check_all, wait_for_upstream

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from kodify_proxy.auth import TokenVerifier
    from kodify_proxy.preprocess import PreprocessingConfig

log = logging.getLogger("kodify_proxy.launcher")
DRAIN_WAIT = 1.0  # seconds an idle connection may still start a request once SIGTERM came
ACCEPT_TURNS = 100  # at most this many 10 ms turns to accept the connections queued when SIGTERM came


@dataclass(frozen=True)
class Prepared:
    """Upstream state and the LiteLLM config built from it."""

    monitor: UpstreamMonitor
    litellm_config: dict[str, Any]


async def discover(settings: Settings, config: KodifyConfig, wait: bool) -> list[UpstreamState]:
    """WAIT_VLLM for the first upstream when asked, then check every upstream once."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.connect_timeout)) as client:
        first = config.upstreams[0]
        if wait and not await wait_for_upstream(client, first, settings.wait_vllm_attempts, settings.wait_vllm_timeout):
            raise StartupError(
                f"Upstream {first.url} did not answer GET /v1/models after {settings.wait_vllm_attempts} attempts "
                f"{settings.wait_vllm_timeout:g} s apart; start the vLLM server or raise WAIT_VLLM_ATTEMPTS"
            )
        states = await check_all(client, config.upstreams)
    for state in states:
        if not state.healthy:
            log.warning(
                "Upstream %s is down at start (%s); its models are added as soon as it answers",
                state.upstream.url,
                state.error,
            )
    return states


def prepare(settings: Settings, config: KodifyConfig, wait: bool) -> Prepared:
    """Discover upstreams and build the LiteLLM config for them."""
    states = asyncio.run(discover(settings, config, wait))
    monitor = UpstreamMonitor(config, settings, states)
    model_list = list(monitor.wanted_deployments().values())
    return Prepared(monitor, build_litellm_config(load_template(), model_list, settings))


@dataclass(frozen=True)
class Launch:
    """What `serve` prepared once, before any server process starts: each one's app is built from it."""

    settings: Settings
    config: KodifyConfig
    preprocessing: PreprocessingConfig | None
    prepared: Prepared
    master_key: str
    workers: int
    instance: Instance


def prepare_launch(
    settings: Settings, config: KodifyConfig, workers: int, instance: Instance
) -> tuple[Launch, TokenVerifier | None]:
    """Everything done once per `serve` (on the claimed `instance`): the FIM config read, migrations
    (RUN_MIGRATIONS=1), the auth mode and USERS_TABLE, WAIT_VLLM and discovery, the master key, LiteLLM's config
    written and its environment exported. Returns the user database's verifier too (open for one process;
    `serve --workers` closes it)."""
    from kodify_proxy import auth
    from kodify_proxy.journal.service import prepare_journal
    from kodify_proxy.preprocess import load_configured

    preprocessing = load_configured(settings.completions_preprocessing_config)  # a bad file stops startup here
    prepare_journal(settings, workers, instance)
    verifier = auth.start(settings)  # logs the auth mode; AUTH_TYPE=DB: opens USERS_TABLE (created on first start)
    prepared = prepare(settings, config, wait=settings.wait_vllm)
    observations = {url: found for url, state in prepared.monitor.states.items() if (found := observe(state))}
    UpstreamBoard(instance.directory).reset(observations)  # a worker started later adopts what is newer at once
    master_key = ensure_master_key(settings)
    path = write_litellm_config(instance.litellm_config, prepared.litellm_config)
    export_environment(config, master_key, path)
    if settings.litellm_database_url is not None:
        require_prisma_client()
        migrate_litellm_database()
    log.info("Serving models: %s", ", ".join(prepared.monitor.served_models()) or "none yet")
    return Launch(settings, config, preprocessing, prepared, master_key, workers, instance), verifier


PRISMA_FIX = "build the image, which installs them (docs/deployment.md, 'The LiteLLM admin UI'), or unset DATABASE_URL"


def require_prisma_client() -> None:
    """LiteLLM's admin UI (DATABASE_URL) needs the Prisma client generated for LiteLLM's schema, which the image does
    at build; without it LiteLLM's own startup fails later with a traceback, so say so here, before anything runs."""
    try:
        from prisma import Prisma  # type: ignore[attr-defined]  # noqa: F401 - generated code: importing it is the test
    except Exception as exc:  # prisma-client-py raises RuntimeError when not generated; ImportError when absent
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
        raise StartupError(
            f"DATABASE_URL is set for LiteLLM's admin UI, but LiteLLM's Prisma client and engines are not installed "
            f"({reason}): {PRISMA_FIX}"
        ) from None


def migrate_litellm_database() -> None:
    """LiteLLM's own tables migrated once, as LiteLLM's `litellm` command does before it serves
    (litellm/proxy/proxy_cli.py, 1.106.12: `PrismaManager.setup_database`); we serve its app without that command,
    so this is the one step of it we repeat. DATABASE_URL is read from the environment, as LiteLLM reads it."""
    from litellm_proxy_extras.prisma_toolchain import prisma_cli_available

    if not prisma_cli_available():
        raise StartupError(
            f"DATABASE_URL is set for LiteLLM's admin UI, but the Prisma CLI is not installed: {PRISMA_FIX}"
        )
    from litellm.proxy.db.prisma_client import PrismaManager

    log.info("Migrating LiteLLM's own database (DATABASE_URL) for its admin UI")
    try:
        migrated = PrismaManager.setup_database(use_migrate=True, use_v2_resolver=True)
    except RuntimeError as exc:  # what LiteLLM raises for a migration it can't recover (proxy_cli.py catches it too)
        migrated, why = False, f"{exc}".strip().splitlines()[0]
    else:
        why = "its log above says why"
    if not migrated:
        raise StartupError(
            f"LiteLLM could not migrate its database at DATABASE_URL ({why}): check that the database exists and "
            f"answers, and that Prisma's engines are installed: {PRISMA_FIX}"
        )


def build_app(launch: Launch, worker: int, verifier: TokenVerifier | None) -> ASGIApp:
    """The app of one server process: its runtime (journal spooling in `worker`'s directory; the user database
    opened here unless `verifier` is given) bound for LiteLLM's hooks, our gateway in front of LiteLLM's app."""
    from kodify_proxy import auth, runtime
    from kodify_proxy.gateway import Gateway
    from kodify_proxy.journal.service import open_journal

    settings = launch.settings
    journal = open_journal(settings, launch.instance, worker)
    if verifier is None:
        verifier = auth.start(settings, announce=False)
    monitor = launch.prepared.monitor
    board = UpstreamBoard(launch.instance.directory)
    rt = runtime.build_runtime(
        settings, launch.config, monitor, launch.master_key, verifier, launch.preprocessing, journal, board
    )
    runtime.bind(rt)
    monitor.mark_registered()
    from litellm.proxy.proxy_server import app  # imports LiteLLM: only once everything above is known to be valid

    return Gateway(app, rt)


def ensure_master_key(settings: Settings) -> str:
    """LITELLM_MASTER_KEY, else the key in the state dir (shared by every server there), else a new random one
    written there (0600)."""
    if settings.master_key is not None:
        return settings.master_key.get_secret_value()
    path = settings.resolved_state_dir() / "master_key"
    if not path.exists():
        _create_master_key(path)
    return path.read_text(encoding="utf-8").strip()


def _create_master_key(path: Path) -> None:
    """Written whole aside, then linked into place only if still absent: two servers starting at once agree on one
    key, and neither can read a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".master_key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("sk-" + secrets.token_urlsafe(32) + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        return  # another server made it first: its key is the one
    finally:
        draft.unlink()
    log.warning("No LITELLM_MASTER_KEY given: generated one for the LiteLLM admin API and UI in %s", path)


def write_litellm_config(path: Path, litellm_config: dict[str, Any]) -> Path:
    """Write the config LiteLLM loads at `path` (in the server's instance directory); env references, no secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(litellm_config, sort_keys=False), encoding="utf-8")
    return path


def export_environment(config: KodifyConfig, master_key: str, litellm_config_path: Path) -> None:
    """The environment LiteLLM reads at startup: its config path, the master key and upstream keys."""
    os.environ["CONFIG_FILE_PATH"] = str(litellm_config_path)
    os.environ["LITELLM_MASTER_KEY"] = master_key
    for index, upstream in enumerate(config.upstreams):
        if upstream.api_key is not None:
            os.environ[upstream_key_env(index)] = upstream.api_key.get_secret_value()


def http_protocol(header_timeout: float) -> type:
    """uvicorn's HTTP/1.1 protocol, answering in the OpenAI error shape what uvicorn answers itself, and closing a
    connection whose request headers have not arrived within `header_timeout` seconds (KODIFY_BODY_TIMEOUT).

    uvicorn writes its 400 before any ASGI app runs (uvicorn/protocols/http/httptools_impl.py, `send_400_response`),
    and has no timer for headers that never complete (its keep-alive timer runs only between requests), so a client
    could hold a connection forever. The body is bounded where it is read (`asgi.read_body`).
    `uvicorn.Config(http=...)` takes the protocol class.
    """
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    from kodify_proxy.errors import InvalidRequest, KodifyError, RequestTimeout

    class OpenAIShapedProtocol(HttpToolsProtocol):
        headers_timer: asyncio.TimerHandle | None = None
        headers_begun = False  # bytes of a request arrived and its headers are not complete yet
        draining = False  # the server is shutting down: serve what arrived, keep nothing alive

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_headers_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_headers_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.headers_begun = True
            if self.headers_timer is None:  # a new connection's clock already runs from its start
                self._arm_headers_timer()

        def on_headers_complete(self) -> None:
            self.headers_begun = False
            self._disarm_headers_timer()
            super().on_headers_complete()
            if self.draining:  # SIGTERM came: this request is served, and its connection closed after it
                self.cycle.keep_alive = False

        def shutdown(self) -> None:
            # uvicorn closes a connection between requests at once, but a client may have sent its request already:
            # closing a socket with unread bytes resets it. Such a connection gets DRAIN_WAIT seconds to start one.
            self.draining = True
            if self.cycle is None or self.cycle.response_complete:
                self.loop.call_later(DRAIN_WAIT, self._close_if_idle)
            else:
                self.cycle.keep_alive = False

        def _close_if_idle(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.headers_begun and not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self._send_error(InvalidRequest(f"{msg} Send a well-formed HTTP/1.1 request.", param="request"))

        def _arm_headers_timer(self) -> None:
            self.headers_timer = self.loop.call_later(header_timeout, self._headers_timed_out)

        def _disarm_headers_timer(self) -> None:
            if self.headers_timer is not None:
                self.headers_timer.cancel()
                self.headers_timer = None

        def _headers_timed_out(self) -> None:
            self.headers_timer = None
            if self.transport.is_closing():
                return
            if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
                # A request pipelined behind a response still being written: a 408 now would cut into that
                # response, so this request's clock starts again.
                self._arm_headers_timer()
            elif self.headers_begun:
                message = f"The request headers did not arrive within {header_timeout:g} s (KODIFY_BODY_TIMEOUT); "
                self._send_error(RequestTimeout(message + "send the whole request at once", param="request"))
            else:  # nothing sent: close quietly, as uvicorn's keep-alive timer does (a browser's preconnect
                # would otherwise find a 408 nobody asked for)
                self.transport.close()

        def _send_error(self, error: KodifyError) -> None:
            body = error.render()
            head = [STATUS_LINE[error.status_code]]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
            self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
            self.transport.close()

    return OpenAIShapedProtocol


def run(app: ASGIApp, settings: Settings, host: str, port: int) -> None:
    """Serve `app` in this process until SIGTERM/SIGINT.

    On a signal uvicorn stops accepting, lets requests in flight finish for up to KODIFY_SHUTDOWN_GRACE seconds,
    then runs the lifespan shut-down (the journal is flushed there).
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        lifespan="on",
        http=http_protocol(settings.body_timeout),
        timeout_graceful_shutdown=settings.shutdown_grace,
        **tls_options(settings),
    )
    draining_server(uvicorn.Server)(config).run()


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's HTTPS arguments from KODIFY_TLS_* (none without a certificate)."""
    return tls.server_options(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)


def draining_server(base: type[uvicorn.Server]) -> type[uvicorn.Server]:
    """uvicorn's Server, accepting the connections the kernel already queued before it stops listening at SIGTERM.

    Closing a listening socket resets every connection still in its accept queue: clients that connected before the
    signal would get a reset instead of their answer (seen with 12 requests in flight against real vLLM).
    """

    class DrainingServer(base):  # type: ignore[misc, valid-type]
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            listening = [sock for server in self.servers for sock in server.sockets]
            for _ in range(ACCEPT_TURNS):  # the loop accepts a readable listening socket's queue on its next turn
                if not select.select(listening, [], [], 0)[0]:
                    break
                await asyncio.sleep(0.01)
            await super().shutdown(sockets)

    return DrainingServer
