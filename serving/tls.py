"""TLS and mutual TLS for every hop, from PEM files named by flags.

Server side: ``--tls-cert`` and ``--tls-key`` turn TLS on; ``--tls-client-ca``
also requires every client to present a certificate signed by that CA (mTLS).
Client side (the gateway to its peers, the CLI, health checks): a CA to trust
and, for mTLS, the client's own certificate and key.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read TLS file {path}: {exc.strerror}") from exc


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """None (plaintext) unless cert and key are given."""
    if not cert and not key:
        if client_ca:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))],
        root_certificates=_read(client_ca) if client_ca else None,
        require_client_auth=bool(client_ca),
    )


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """None (plaintext) unless a CA to trust is given; cert and key add a client certificate."""
    if not ca:
        if cert or key:
            raise SystemExit("a client certificate needs the CA to trust (--peer-tls-ca / --tls-ca)")
        return None
    if bool(cert) != bool(key):
        raise SystemExit("a client certificate needs both the certificate and its key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def open_channel(target: str, credentials: grpc.ChannelCredentials | None, options=(), aio: bool = True):
    module = grpc.aio if aio else grpc
    if credentials is None:
        return module.insecure_channel(target, options=list(options))
    return module.secure_channel(target, credentials, options=list(options))
