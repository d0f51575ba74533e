"""HTTPS served by kodify-proxy itself (KODIFY_TLS_CERT_FILE, KODIFY_TLS_KEY_FILE, KODIFY_TLS_CA_FILE): a CA and
certificates made here, the real server process with one worker and with two, the OpenAI SDK verifying against the
test CA, clients that must fail, client certificates, and the settings' refusals of a bad pair."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.multiprocess import MultiProcessCollector

from kodify_proxy.settings import SettingsError, load_settings
from tests.servers import Server, kodify_proxy, run_cli, upstreams_yaml

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "over TLS"}]}
Key = ec.EllipticCurvePrivateKey


# --- certificates made here ----------------------------------------------------------------------------------------


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _issue(
    name: str, key: Key, issuer: tuple[x509.Certificate, Key] | None, usage: str, days: float = 1
) -> x509.Certificate:
    """A certificate for `key`: a CA (`usage` "ca", self-signed when `issuer` is None), or a leaf for "server"
    (127.0.0.1 and localhost) or "client"; with the extensions strict verifiers (Python 3.13+) ask for."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    after = now + datetime.timedelta(days=days)  # days < 0: expired already
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - datetime.timedelta(minutes=5), after - datetime.timedelta(days=1)))
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
    )
    if usage == "ca":
        flags = {"key_cert_sign": True, "crl_sign": True, "digital_signature": False}
    else:
        flags = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if usage == "server":
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    unused = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False)
    usages = x509.KeyUsage(**flags, **unused, encipher_only=False, decipher_only=False)
    return builder.add_extension(usages, critical=True).sign(signer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: Key, passphrase: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate and a client certificate it signed; a second CA nobody trusts, with its client."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]
    other_ca: Path
    other_client: tuple[Path, Path]
    other_key: Path  # a key that is not the server certificate's

    def trusting(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context that verifies the server against the test CA, presenting `client` when given."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client:
            context.load_cert_chain(*map(str, client))
        return context


def _make_pki(directory: Path) -> Pki:
    ca_key, other_ca_key = _key(), _key()
    ca = _issue("kodify test CA", ca_key, None, "ca")
    other_ca = _issue("someone else's CA", other_ca_key, None, "ca")
    server_key, client_key, other_client_key = _key(), _key(), _key()
    server = _issue("kodify-proxy", server_key, (ca, ca_key), "server")
    client = _issue("alice", client_key, (ca, ca_key), "client")
    other_client = _issue("mallory", other_client_key, (other_ca, other_ca_key), "client")
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        ca_key=_write_key(directory / "ca.key", ca_key),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        client=(_write_cert(directory / "client.pem", client), _write_key(directory / "client.key", client_key)),
        other_ca=_write_cert(directory / "other-ca.pem", other_ca),
        other_client=(
            _write_cert(directory / "other-client.pem", other_client),
            _write_key(directory / "other-client.key", other_client_key),
        ),
        other_key=_write_key(directory / "other.key", _key()),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


def _tls_env(pki: Pki, **more: str) -> dict[str, str]:
    return {"KODIFY_TLS_CERT_FILE": str(pki.server_cert), "KODIFY_TLS_KEY_FILE": str(pki.server_key), **more}


@pytest.fixture(scope="module")
def https_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Server, pki: Pki) -> Iterator[Server]:
    """One kodify-proxy process serving HTTPS with the test CA's server certificate."""
    tmp = tmp_path_factory.mktemp("tls")
    server = kodify_proxy(tmp, upstreams_yaml(upstream.url), env=_tls_env(pki), tls=pki.trusting()).start()
    yield server
    server.stop()


# --- the settings: both files or neither, each readable, a matching pair -----------------------------------------


def _problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    return raised.value.problems


def test_a_valid_pair_and_a_ca_are_accepted(pki: Pki) -> None:
    settings = load_settings(_tls_env(pki, KODIFY_TLS_CA_FILE=str(pki.ca)))
    assert (settings.tls_cert_file, settings.tls_key_file) == (str(pki.server_cert), str(pki.server_key))
    assert load_settings({"KODIFY_TLS_CERT_FILE": "", "KODIFY_TLS_KEY_FILE": ""}).tls_cert_file is None


def test_both_files_or_neither(pki: Pki) -> None:
    both = "set both KODIFY_TLS_CERT_FILE and KODIFY_TLS_KEY_FILE for HTTPS, or neither for plain HTTP"
    (only_cert,) = _problems({"KODIFY_TLS_CERT_FILE": str(pki.server_cert)})
    assert only_cert.startswith("KODIFY_TLS_CERT_FILE is set but KODIFY_TLS_KEY_FILE is not; " + both)
    (only_key,) = _problems({"KODIFY_TLS_KEY_FILE": str(pki.server_key)})
    assert only_key.startswith("KODIFY_TLS_KEY_FILE is set but KODIFY_TLS_CERT_FILE is not; " + both)
    assert _problems({"KODIFY_TLS_CA_FILE": str(pki.ca)}) == [
        "KODIFY_TLS_CA_FILE (client certificates) needs HTTPS: set KODIFY_TLS_CERT_FILE and KODIFY_TLS_KEY_FILE "
        "too, or remove KODIFY_TLS_CA_FILE"
    ]


def test_bad_files_are_named_with_their_fix(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    (unreadable,) = _problems(_tls_env(pki, KODIFY_TLS_CERT_FILE=missing))
    assert unreadable.startswith(f"KODIFY_TLS_CERT_FILE={missing!r} cannot be read (No such file or directory); ")
    (mismatch,) = _problems(_tls_env(pki, KODIFY_TLS_KEY_FILE=str(pki.other_key)))
    assert mismatch.startswith(
        f"KODIFY_TLS_KEY_FILE={str(pki.other_key)!r} is not the private key of "
        f"KODIFY_TLS_CERT_FILE={str(pki.server_cert)!r}; give the key the certificate was issued for"
    )
    (no_cert,) = _problems(_tls_env(pki, KODIFY_TLS_CERT_FILE=str(pki.server_key)))
    assert no_cert.startswith(f"KODIFY_TLS_CERT_FILE={str(pki.server_key)!r} holds no PEM certificate")
    (no_ca,) = _problems(_tls_env(pki, KODIFY_TLS_CA_FILE=str(pki.server_key)))
    assert no_ca.startswith(f"KODIFY_TLS_CA_FILE={str(pki.server_key)!r} holds no PEM certificate")
    encrypted = _write_key(tmp_path / "encrypted.key", _key(), passphrase=b"secret")
    (locked,) = _problems(_tls_env(pki, KODIFY_TLS_KEY_FILE=str(encrypted)))
    assert locked.startswith(f"KODIFY_TLS_KEY_FILE={str(encrypted)!r} is not a PEM private key without a passphrase")


def test_serve_refuses_a_key_that_is_not_the_certificates(pki: Pki, tmp_path: Path) -> None:
    env = {**os.environ, **_tls_env(pki, KODIFY_TLS_KEY_FILE=str(pki.other_key)), "KODIFY_STATE_DIR": str(tmp_path)}
    done = run_cli("serve", "--config", str(tmp_path / "config.yml"), env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: KODIFY_TLS_KEY_FILE={str(pki.other_key)!r} is not the private key of")
    assert "Traceback" not in done.stderr


def test_check_reports_tls(pki: Pki, tmp_path: Path) -> None:
    def check(tls: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KODIFY_TLS_")}
        env.update(tls, KODIFY_STATE_DIR=str(tmp_path))
        return run_cli("check", "--config", str(tmp_path / "config.yml"), env=env, timeout=60).stdout

    good = check(_tls_env(pki, KODIFY_TLS_CA_FILE=str(pki.ca)))
    assert f"ok: TLS: serve speaks HTTPS with {pki.server_cert} (valid until " in good
    assert "; clients must present a certificate signed by" in good
    assert "note: TLS: the certificate expires in 1 day (" in good  # the test CA's certificates live one day
    for days, expected in ((400, None), (-2, f"problem: TLS: the certificate in {tmp_path}/expired.pem expired on")):
        ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
        cert = _issue("kodify-proxy", key, (ca_cert, ca_key), "server", days=days)  # type: ignore[arg-type]
        path = _write_cert(tmp_path / ("expired.pem" if days < 0 else "long.pem"), cert)
        report = check(_tls_env(pki, KODIFY_TLS_CERT_FILE=str(path)))
        assert "note: TLS: the certificate expires" not in report
        assert (expected or f"ok: TLS: serve speaks HTTPS with {path} (valid until") in report, report
    assert "problem: KODIFY_TLS_KEY_FILE=" in check(_tls_env(pki, KODIFY_TLS_KEY_FILE=str(pki.other_key)))
    assert "note: no TLS: serve speaks plain HTTP" in check({})


# --- one process -------------------------------------------------------------------------------------------------


def test_openai_sdk_verifying_the_ca_gets_a_chat_completion(https_proxy: Server, pki: Pki) -> None:
    assert https_proxy.url.startswith("https://")
    http = httpx.Client(verify=pki.trusting())  # the SDK closes it
    with openai.OpenAI(base_url=https_proxy.url + "/v1", api_key="unused", http_client=http, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert f"Uvicorn running on https://127.0.0.1:{https_proxy.port}" in https_proxy.log_text()


def test_a_client_that_does_not_trust_the_ca_fails_verification(https_proxy: Server, pki: Pki) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_proxy.url + "/health", verify=ssl.create_default_context(cafile=str(pki.other_ca)))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_proxy.url + "/health")  # the system's CAs


def test_client_config_asks_an_https_proxy_verifying_its_ca(https_proxy: Server, pki: Pki) -> None:
    def client_config(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("client-config", "tabby", "--url", https_proxy.url, *extra, timeout=60)

    done = client_config("--cacert", str(pki.ca))
    assert done.returncode == 0, done.stderr
    assert f'endpoint = "{https_proxy.url}"' in done.stdout
    refused = client_config()  # the system's CAs do not know the test CA
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert refused.stderr.startswith("error: cannot reach kodify-proxy at https://")
    missing = client_config("--cacert", "/nonexistent/ca.pem")
    assert missing.returncode == 1 and missing.stderr.startswith("error: --cacert /nonexistent/ca.pem: No such file")


def test_plain_http_to_the_tls_port_fails(https_proxy: Server) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_proxy.port}/health", timeout=5)


# --- two workers -------------------------------------------------------------------------------------------------


def _served_by(metrics: Path, route: str) -> dict[int, float]:
    """Per worker pid: its `kodify_requests_total` for `route` (read from its own file)."""
    found: dict[int, float] = {}
    for path in metrics.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == "kodify_requests_total" and sample.labels.get("route") == route:
                    found[pid] = found.get(pid, 0) + sample.value
    return found


def test_both_workers_serve_https_on_every_socket(tmp_path: Path, upstream: Server, pki: Pki) -> None:
    env = _tls_env(pki, KODIFY_WORKERS="2")
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env=env, tls=pki.trusting()).start(timeout=180)
    try:
        proxy.wait_workers(2)
        for _ in range(6):  # each a new connection: the kernel deals them over every listening socket
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{proxy.port}/health", timeout=5)
        for _ in range(24):
            answer = httpx.post(
                proxy.url + "/v1/chat/completions", json=CHAT, verify=pki.trusting(), headers={"Connection": "close"}
            )
            assert answer.status_code == 200, answer.text
        metrics = proxy.instance_dir / "metrics"
        deadline = time.monotonic() + 10  # a request is counted once its answer has gone out
        while sum((served := _served_by(metrics, "/v1/chat/completions")).values()) < 24:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(served.values()) == 24 and len([n for n in served.values() if n > 0]) == 2, served
    finally:
        proxy.stop()
    log = proxy.log_text()
    assert f"Uvicorn running on https://127.0.0.1:{proxy.port} with 2 workers" in log
    assert f"Listening at: https://127.0.0.1:{proxy.port}" in log


# --- client certificates -------------------------------------------------------------------------------------------


def test_with_a_ca_file_only_clients_with_its_certificates_are_served(
    tmp_path: Path, upstream: Server, pki: Pki
) -> None:
    env = _tls_env(pki, KODIFY_TLS_CA_FILE=str(pki.ca))
    proxy = kodify_proxy(tmp_path, upstreams_yaml(upstream.url), env=env, tls=pki.trusting(pki.client)).start()
    try:
        answer = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, verify=pki.trusting(pki.client))
        assert answer.status_code == 200, answer.text
        for refused in (pki.trusting(), pki.trusting(pki.other_client)):
            with pytest.raises(httpx.TransportError):
                httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, verify=refused)
    finally:
        proxy.stop()
