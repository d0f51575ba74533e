"""The image's EXTRA_CA_CERTS, for a company proxy that intercepts TLS: the Dockerfile's own step, run in the tier's
base image, makes pip trust a package mirror whose certificate that CA signed; without it pip refuses the mirror."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.engine import DockerError, docker
from tests.compose.images import Images
from tests.compose.wheels import WHEELS
from tests.test_deploy import dockerfile_instructions
from tests.test_tls import Pki, _make_pki

pytestmark = pytest.mark.compose


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """The test reads the client's result, not the server's log."""


@contextlib.contextmanager
def https_mirror(directory: Path, pki: Pki) -> Iterator[int]:
    """`directory` over HTTPS on 127.0.0.1 with the test CA's server certificate (for localhost); its port."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def pip_through_the_ca_step(base: str, extra_ca_certs: str, find_links: str) -> str:
    """The Dockerfile's EXTRA_CA_CERTS step, then pip with the image's PIP_CERT, in a container of `base` on the
    host's network (the mirror is on loopback); pip's output."""
    steps = dockerfile_instructions()
    (ca_step,) = [args for op, args in steps if op == "RUN" and "EXTRA_CA_CERTS" in args]
    cert = next(pair for op, args in steps if op == "ENV" for pair in args.split() if pair.startswith("PIP_CERT="))
    pip = f"pip download --no-deps --no-index --find-links {find_links} --dest /tmp/wheels idna"
    script = f"{ca_step} && {pip}"
    return docker(
        *("run", "--rm", "--network", "host", "--env", f"EXTRA_CA_CERTS={extra_ca_certs}", "--env", cert),
        *(base, "sh", "-c", script),
    )


def test_extra_ca_certs_let_pip_trust_a_mirror_that_ca_signed(images: Images, tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    (wheel,) = WHEELS.glob("kodify-proxy-*/idna-*.whl")
    with https_mirror(WHEELS, pki) as port:
        find_links = f"https://localhost:{port}/{wheel.parent.name}/"
        with pytest.raises(DockerError, match="CERTIFICATE_VERIFY_FAILED"):
            pip_through_the_ca_step(images.base.name, "", find_links)
        output = pip_through_the_ca_step(images.base.name, pki.ca.read_text(), find_links)
    assert f"Saved /tmp/wheels/{wheel.name}" in output
