"""Reaching each worker of a `serve --workers N` process on its own: a keep-alive connection the kernel gave to that
worker. Which worker accepts a connection is the kernel's choice; which process holds the accepted socket is written
in /proc (its inode in /proc/net/tcp, the descriptor naming it in /proc/PID/fd)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import Server


def worker_pids(server: Server) -> list[int]:
    """The pids of the server's worker processes (its arbiter's children)."""
    assert server.process is not None
    pid = server.process.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the TCP connection from `client_port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (server_port, client_port):
            return fields[9]
    return None


def accepted_by(server_port: int, client_port: int, pids: Iterable[int]) -> int | None:
    """Which of `pids` holds the server's end of the connection from `client_port`."""
    inode = _socket_inode(server_port, client_port)
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


@dataclass
class Pinned:
    """A keep-alive connection to one worker; `get`/`post` check it is still that one (a connection the server closed
    would be reopened by httpx, to whichever worker the kernel picks)."""

    pid: int
    client: httpx.Client
    local_port: int

    def _checked(self, response: httpx.Response) -> httpx.Response:
        port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        assert port == self.local_port, f"the connection to worker {self.pid} was reopened"
        return response

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return self._checked(self.client.get(path, headers=headers))

    def post(self, path: str, body: object, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return self._checked(self.client.post(path, json=body, headers=headers))


def pin_workers(server: Server, attempts: int = 200) -> list[Pinned]:
    """One connection to each worker of `server` (new connections until the kernel has given one to each)."""
    pids = worker_pids(server)
    pinned: dict[int, Pinned] = {}
    for _ in range(attempts):
        client = httpx.Client(base_url=server.url, timeout=30)
        response = client.get("/health/liveness")
        port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        pid = accepted_by(server.port, port, pids)
        if pid is None or pid in pinned:
            client.close()
            continue
        pinned[pid] = Pinned(pid, client, port)
        if len(pinned) == len(pids):
            return list(pinned.values())
    for each in pinned.values():
        each.client.close()
    raise AssertionError(f"no connection reached every worker of {pids} in {attempts} attempts")
