"""Issue 8: TLS and mutual TLS on every hop, with a throwaway CA made by the test."""

import datetime
import ipaddress
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from procs import Service, health_status, running
from recsys.v1 import gateway_pb2 as pb, gateway_pb2_grpc
from serving import tls
from serving.healthcheck import check

pytestmark = pytest.mark.slow


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


def _issue(ca_key, ca_cert, cn, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (x509.CertificateBuilder().subject_name(_name("recsys test CA")).issuer_name(_name("recsys test CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    ca, _ = _write(d / "ca", ca_key, ca_cert)
    server = _write(d / "server", *_issue(ca_key, ca_cert, "localhost", server=True))
    client = _write(d / "client", *_issue(ca_key, ca_cert, "recsys client", server=False))
    return {"ca": ca, "server": server, "client": client}


def test_mutual_tls_on_every_hop(live_stack, pki):
    cert, key = pki["server"]
    client_cert, client_key = pki["client"]
    mtls = ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", pki["ca"]]
    model = ["--model-base", str(live_stack.model_base), "--poll-interval", "0"]
    query = Service("query_service", [*model, *mtls])
    index = Service("index_service", [*model, *mtls])
    gateway = Service("gateway", [
        "--query-target", query.address, "--index-targets", index.address, *mtls,
        "--peer-tls-ca", pki["ca"], "--peer-tls-cert", client_cert, "--peer-tls-key", client_key,
    ])
    with_cert = tls.channel_credentials(pki["ca"], client_cert, client_key)
    try:
        for service in (query, index, gateway):
            service.start()
        for service in (query, index, gateway):
            _wait_serving(service, with_cert)
        with tls.open_channel(gateway.address, with_cert, aio=False) as channel:
            response = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                pb.RecommendRequest(user_id=live_stack.users.ids[0], k=5), timeout=10)
            assert len(response.items) == 5
        # No client certificate: the handshake is refused.
        without_cert = tls.channel_credentials(pki["ca"])
        with tls.open_channel(gateway.address, without_cert, aio=False) as channel:
            with pytest.raises(grpc.RpcError) as err:
                gateway_pb2_grpc.GatewayStub(channel).Recommend(pb.RecommendRequest(user_id="1"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext clients get nothing either.
        assert health_status(gateway.address) == "UNAVAILABLE"
    finally:
        for service in (gateway, index, query):
            assert service.stop() == 0


def test_tls_without_client_certificates(live_stack, pki):
    cert, key = pki["server"]
    index = Service("index_service", ["--model-base", str(live_stack.model_base), "--tls-cert", cert,
                                      "--tls-key", key])
    server_only = tls.channel_credentials(pki["ca"])
    try:
        index.start()
        _wait_serving(index, server_only)
        assert check(index.address, "recsys.internal.v1.IndexService", credentials=server_only) == "SERVING"
    finally:
        assert index.stop() == 0


def _wait_serving(service, credentials, timeout=60.0):
    deadline = time.monotonic() + timeout
    while check(service.address, credentials=credentials, timeout_s=0.5) != "SERVING":
        assert service.proc.poll() is None, service.log_tail()
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.1)


def test_half_configured_tls_is_refused():
    with pytest.raises(SystemExit, match="both"):
        tls.server_credentials("cert.pem", "")
    with pytest.raises(SystemExit, match="CA"):
        tls.channel_credentials("", "c.pem", "k.pem")
