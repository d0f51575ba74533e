"""A server's instance directory on its own: its name for each kind of address, claimed once (a second claim, as a
second server makes, is refused naming --port and the holder), and an address something listens on refused even from
another state directory. Two real servers: tests/test_workers.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodify_proxy.errors import InstanceConflict, StartupError
from kodify_proxy.instance import claim_instance, instance_name, render_address
from kodify_proxy.settings import load_settings
from tests.servers import free_port


@pytest.mark.parametrize(
    ("host", "port", "name", "address"),
    [
        ("0.0.0.0", 8000, "0.0.0.0-8000@box", "0.0.0.0:8000"),
        ("127.0.0.1", 8001, "127.0.0.1-8001@box", "127.0.0.1:8001"),
        ("localhost", 80, "localhost-80@box", "localhost:80"),
        ("::", 8000, "__-8000@box", "[::]:8000"),
        ("::1", 9000, "__1-9000@box", "[::1]:9000"),
        ("fe80::1%eth0", 8000, "fe80__1_eth0-8000@box", "[fe80::1%eth0]:8000"),
        ("", 8000, "_-8000@box", ":8000"),
    ],
)
def test_each_address_has_a_directory_name_of_its_own(host: str, port: int, name: str, address: str) -> None:
    assert instance_name(host, port, "box") == name and render_address(host, port) == address
    assert instance_name(host, port) == name.replace("@box", f"@{socket.gethostname()}")
    assert instance_name("0.0.0.0", 8000, "a1b2c3/x y") == "0.0.0.0-8000@a1b2c3_x_y"  # a container's, made safe


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A socket listening as a worker of another server does (SO_REUSEPORT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_one_address_is_claimed_once_and_again_once_let_go(tmp_path: Path) -> None:
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path)})
    port = free_port()
    first = claim_instance(settings, "127.0.0.1", port)
    assert first.directory == tmp_path / "instances" / f"127.0.0.1-{port}@{socket.gethostname()}"
    beside = claim_instance(settings, "127.0.0.1", free_port())  # another port: its own directory, no conflict
    refusal = (
        rf"^--port {port}: another kodify-proxy \(pid \d+, serving 127\.0\.0\.1:{port}\) runs on 127\.0\.0\.1:{port} "
        rf"with this state directory \({first.directory}\); stop it, or give this server another --port$"
    )
    with pytest.raises(InstanceConflict, match=refusal):
        claim_instance(settings, "127.0.0.1", port)
    first.release()
    claim_instance(settings, "127.0.0.1", port).release()
    beside.release()


def test_an_address_something_listens_on_is_refused_from_any_state_directory(
    tmp_path: Path, listening: socket.socket
) -> None:
    port = listening.getsockname()[1]
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path)})
    refusal = rf"^--port {port}: 127\.0\.0\.1:{port} is already in use by another process; stop it, or give"
    with pytest.raises(InstanceConflict, match=refusal):
        claim_instance(settings, "127.0.0.1", port)
    with pytest.raises(InstanceConflict, match=rf"^--port {port}: 0\.0\.0\.0:{port} is already in use"):
        claim_instance(settings, "0.0.0.0", port)  # overlaps it: the kernel would share it too
    listening.close()
    claim_instance(settings, "127.0.0.1", port).release()  # free again: claimed (the refusal let its lock go)


def test_a_state_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = load_settings({"KODIFY_STATE_DIR": str(tmp_path / "file" / "state")})
    with pytest.raises(
        StartupError, match=r"^KODIFY_STATE_DIR: cannot create .*file/state/instances/127\.0\.0\.1-\d+@"
    ):
        claim_instance(settings, "127.0.0.1", free_port())
