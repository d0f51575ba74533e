"""HTTPS served by kodify-proxy itself (docs/deployment.md, "TLS"): KODIFY_TLS_CERT_FILE, KODIFY_TLS_KEY_FILE and
KODIFY_TLS_CA_FILE checked once at startup (a bad pair is a settings error naming the variable, not a traceback in a
worker), and the server options uvicorn and gunicorn are given."""

from __future__ import annotations

import ssl
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

BOTH_OR_NEITHER = (
    "set both KODIFY_TLS_CERT_FILE and KODIFY_TLS_KEY_FILE for HTTPS, or neither for plain HTTP (behind an ingress "
    "or proxy that terminates TLS)"
)


def problems(cert: str | None, key: str | None, ca: str | None) -> list[str]:
    """Both files or neither, each readable, loaded as the server will load them: a bad pair stops startup here."""
    if cert is None and key is None:
        if ca is None:
            return []
        return [
            "KODIFY_TLS_CA_FILE (client certificates) needs HTTPS: set KODIFY_TLS_CERT_FILE and KODIFY_TLS_KEY_FILE "
            "too, or remove KODIFY_TLS_CA_FILE"
        ]
    if cert is None or key is None:
        given, missing = ("CERT", "KEY") if key is None else ("KEY", "CERT")
        return [f"KODIFY_TLS_{given}_FILE is set but KODIFY_TLS_{missing}_FILE is not; {BOTH_OR_NEITHER}"]
    named = {"KODIFY_TLS_CERT_FILE": cert, "KODIFY_TLS_KEY_FILE": key, "KODIFY_TLS_CA_FILE": ca}
    unreadable = [problem for name, path in named.items() if path and (problem := _unreadable(name, path))]
    return unreadable or _tls_load_problems(cert, key, ca)


def _unreadable(name: str, path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return (
            f"{name}={path!r} cannot be read ({exc.strerror}); give the path of a PEM file this process can read "
            "(in a container: where the file is mounted, readable by the server's user)"
        )


def _tls_load_problems(cert: str, key: str, ca: str | None) -> list[str]:
    problems = [
        f"{name}={path!r} holds no PEM certificate ({reason}); give one that starts with -----BEGIN CERTIFICATE-----"
        for name, path in (("KODIFY_TLS_CERT_FILE", cert), ("KODIFY_TLS_CA_FILE", ca))
        if path and (reason := _certificates_unreadable(path))
    ]
    if problems:
        return problems
    try:  # OpenSSL asks a terminal for the passphrase of an encrypted key: an empty one refuses it instead
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [
                f"KODIFY_TLS_KEY_FILE={key!r} is not the private key of KODIFY_TLS_CERT_FILE={cert!r}; give the key "
                "the certificate was issued for (`openssl x509 -noout -pubkey -in CERT` and `openssl pkey -pubout "
                "-in KEY` print the same public key for a matching pair)"
            ]
        return [
            f"KODIFY_TLS_KEY_FILE={key!r} is not a PEM private key without a passphrase; give the certificate's key "
            "as -----BEGIN PRIVATE KEY----- (`openssl pkey -in KEY -out KEY.plain` converts one and drops a passphrase)"
        ]
    return []


def _certificates_unreadable(path: str) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        return str(exc.reason or exc)
    return None


def server_options(cert: str | None, key: str | None, ca: str | None) -> dict[str, Any]:
    """uvicorn's Config arguments for HTTPS, or none without a certificate (the files were checked at startup).

    With a CA file a client must present a certificate signed by one of its CAs; uvicorn loads it into the server's
    context (uvicorn/config.py, `create_ssl_context`)."""
    if cert is None:
        return {}
    return {
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_ca_certs": ca,
        "ssl_cert_reqs": ssl.CERT_NONE if ca is None else ssl.CERT_REQUIRED,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
    }


def expires(cert: str) -> datetime:
    """When the server certificate (the first of the chain in `cert`) stops being valid."""
    return x509.load_pem_x509_certificate(Path(cert).read_bytes()).not_valid_after_utc
