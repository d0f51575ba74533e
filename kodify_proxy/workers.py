"""`serve --workers N` (KODIFY_WORKERS): N server processes on one listening socket, one service to clients.

gunicorn's arbiter supervises, with uvicorn workers (the `uvicorn-worker` package, as uvicorn's documentation
advises for production): it binds the socket, forks the workers, replaces one that dies or whose event loop stops
answering for WORKER_TIMEOUT seconds, and on SIGTERM stops them all gracefully. What must happen once (WAIT_VLLM,
migrations, USERS_TABLE, the master key, LiteLLM's config) is done by `launcher.prepare_launch` before the arbiter
starts; each worker builds its own app from that (`launcher.build_app`), with its own connections, caches and
journal writer. Each worker takes a numbered slot (a lock file), which names it in the logs and gives it its own
journal spool: a worker that replaces a dead one takes the dead one's slot and stores what it had spooled.
Prometheus metrics go to PROMETHEUS_MULTIPROC_DIR, so GET /metrics answers for the whole server. Slots and metrics
files are in the server's instance directory (kodify_proxy.instance), claimed by `serve` before the arbiter starts,
so another server on the machine never holds them.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Final, NoReturn

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from starlette.types import ASGIApp
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from kodify_proxy import launcher, logs
from kodify_proxy.errors import StartupError
from kodify_proxy.instance import Instance
from kodify_proxy.settings import Settings
from kodify_proxy.upstreams import KodifyConfig

log = logging.getLogger("kodify_proxy.workers")

# Seconds a worker may go without answering the arbiter (its event loop blocked, or still booting: importing LiteLLM
# and starting it takes ~5-15 s on a busy box) before it is killed and replaced.
WORKER_TIMEOUT: Final = 120
# Seconds a worker has after KODIFY_SHUTDOWN_GRACE to run its shut-down (flush the journal) before SIGKILL.
FLUSH_GRACE: Final = 15
# prometheus_client's own variable (kodify_proxy.prometheus_metrics names it too, but importing that module here would
# import prometheus_client, which reads the variable once, at import, before `serve` has set it).
MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG: Final = 2048  # uvicorn's and gunicorn's default
KEEP_ALIVE: Final = 5  # uvicorn's default, as with one process (gunicorn's own default is 2)
# uvicorn's TLS arguments (launcher.tls_options) by gunicorn's setting names
GUNICORN_TLS: Final = {
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_ca_certs": "ca_certs",
    "ssl_cert_reqs": "cert_reqs",
}


def take_slot(directory: Path, count: int) -> tuple[int, int]:
    """The lowest free worker number (0 .. count-1) and the descriptor of its lock file, held for life.

    A dead worker's lock is released by the kernel, so its replacement takes its number (and spool)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        fd = os.open(directory / f"worker-{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return number, fd
    raise StartupError(f"All {count} worker slots in {directory} are taken; is another kodify-proxy using it?")


class KodifyWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn in a gunicorn worker, configured as `serve` with one process configures it: our HTTP protocol, the
    lifespan on, no access log, requests in flight drained on SIGTERM."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "lifespan": "on", "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.app.launch.settings
        self.config.http = launcher.http_protocol(settings.body_timeout)  # needs the settings: set here, not above
        self.config.timeout_graceful_shutdown = settings.shutdown_grace
        # HTTPS as with one process, on every socket this worker serves (the shared one and its own): uvicorn wraps
        # each connection in one context. Set here too because UvicornWorker copies gunicorn's `ssl_version`, whose
        # default is the deprecated generic PROTOCOL_TLS.
        for name, value in launcher.tls_options(settings).items():
            setattr(self.config, name, value)

    serving = False

    def init_signals(self) -> None:
        """uvicorn's server re-raises the SIGTERM it drained for, once it is done; with gunicorn's default handler that
        would kill a worker that stopped cleanly (the arbiter then logs an error). Before the server runs, the signal
        ends the worker at once; after, it has been handled."""
        super().init_signals()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)

    def _signalled(self, sig: int, frame: Any) -> None:
        if not self.serving:
            sys.exit(0)

    async def _serve(self) -> None:
        # UvicornWorker._serve, with the server that accepts what the kernel queued before it stops (launcher).
        self.serving = True
        self.config.app = self.wsgi
        server = launcher.draining_server(Server)(config=self.config)
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, self.handle_exit, signal.SIGQUIT, None)
        # gunicorn's sockets unwrapped (uvicorn closes them at shut-down; gunicorn's wrapper would log the second close
        # as a failure), and this worker's own beside them
        shared = [listener.sock for listener in self.sockets]
        await server.serve(sockets=[*(own_socket(sock) for sock in shared), *shared])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def own_socket(shared: socket.socket) -> socket.socket:
    """A listening socket of this worker's own on the shared one's address (both SO_REUSEPORT), so the kernel deals
    new connections out evenly over the workers. On the one shared socket, whichever worker wakes first accepts every
    connection queued (asyncio accepts up to the backlog at once): a burst of clients, or an IDE's long-lived
    keep-alive connections, would pile onto one worker while another idles. The shared socket stays served too: it
    is one more member of the group, and its share of connections must not wait."""
    own = socket.socket(shared.family, socket.SOCK_STREAM)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    own.bind(shared.getsockname())
    own.listen(BACKLOG)
    own.setblocking(False)
    return own


def _worker_exited(arbiter: Arbiter, worker: Any) -> None:
    """gunicorn's child_exit hook (in the arbiter): a dead worker's live gauges leave the sums."""
    multiprocess = sys.modules["prometheus_client.multiprocess"]  # imported by `serve` (not in a signal handler)
    multiprocess.mark_process_dead(worker.pid, os.environ[MULTIPROCESS_DIR_ENV])


class WorkerPool(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from our settings (not from gunicorn's command line or config files)."""

    def __init__(self, launch: launcher.Launch) -> None:
        self.launch = launch
        self.bind = launch.instance.address
        super().__init__()

    def load_config(self) -> None:
        """gunicorn's settings."""
        settings = self.launch.settings
        values: dict[str, Any] = {
            "bind": [self.bind],
            "workers": self.launch.workers,
            "worker_class": "kodify_proxy.workers.KodifyWorker",
            "timeout": WORKER_TIMEOUT,
            "graceful_timeout": settings.shutdown_grace + FLUSH_GRACE,
            "keepalive": KEEP_ALIVE,
            "backlog": BACKLOG,
            "reuse_port": True,  # each worker listens on its own socket too (own_socket)
            "proc_name": "kodify-proxy",
            "loglevel": "info",
            "accesslog": None,
            "errorlog": "-",
            "child_exit": _worker_exited,
            "when_ready": self._listening,
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        }
        tls = launcher.tls_options(settings)  # gunicorn's own names, so its checks and `Listening at: https://` agree
        values.update({name: tls[option] for option, name in GUNICORN_TLS.items() if option in tls})
        for name, value in values.items():
            self.cfg.set(name, value)

    def _listening(self, arbiter: Arbiter) -> None:
        """gunicorn's when_ready hook: the line the original server logs (and administrators look for), once the
        port is bound."""
        scheme = "https" if self.launch.settings.tls_cert_file else "http"
        log.info(
            "Uvicorn running on %s://%s with %d workers (Press CTRL+C to quit)", scheme, self.bind, self.launch.workers
        )

    def load(self) -> ASGIApp:
        """In each worker, after the fork: its slot, its name in the logs, its app."""
        try:
            number, _ = take_slot(self.launch.instance.workers_dir, self.launch.workers)
            logs.name_worker(number + 1)
            log.info("Worker %d of %d (pid %d) starting", number + 1, self.launch.workers, os.getpid())
            return launcher.build_app(self.launch, number, None)
        except StartupError as exc:
            _boot_failed(exc)


def _boot_failed(exc: StartupError) -> NoReturn:
    """A worker that cannot start says why in one line, and gunicorn's arbiter, seeing this exit status, stops the
    server instead of forking the worker again (what can fail is checked before the arbiter starts: this is a last
    guard, not a way to report a setting)."""
    log.error("%s", exc)
    sys.exit(Arbiter.WORKER_BOOT_ERROR)


def serve(settings: Settings, config: KodifyConfig, count: int, instance: Instance) -> None:
    """Prepare once, then run `count` workers under gunicorn's arbiter until SIGTERM/SIGINT."""
    metrics_dir = instance.metrics_dir  # this server's alone (claim_instance), so emptying it is safe
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero with each start, as with one process
    metrics_dir.mkdir(parents=True)
    instance.workers_dir.mkdir(exist_ok=True)
    if "prometheus_client" in sys.modules:  # it would keep each worker's values to itself: /metrics would lie
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")
    os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
    importlib.import_module("prometheus_client.multiprocess")  # for _worker_exited
    launch, verifier = launcher.prepare_launch(settings, config, count, instance)
    if verifier is not None:
        verifier.close()  # each worker opens its own connections
    log.info("Serving with %d worker processes (instance directory %s)", count, instance.directory)
    WorkerPool(launch).run()
