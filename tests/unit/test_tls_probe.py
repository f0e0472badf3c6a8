"""Why a broker's certificate is not trusted, asked with a handshake of our own (consumer.tls_probe):
librdkafka says "certificate verify failed" for an expired certificate, a CA the client lacks and
a name that does not match alike, and each is someone else's to fix.

Real handshakes, no broker: a TLS server of the standard library presents certificates of a CA
made here (dev/stack_impl's openssl helpers); librdkafka itself connects to it in the last test.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import dev_stack_impl

from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.errors import EXIT_CONFIG
from consumer.kafka_names import broker_untrusted, login_refused
from consumer.runner import GroupRunner
from consumer.testing import MemoryStore
from consumer.tls_probe import broker_address, why_untrusted

_SAID = ("ssl://127.0.0.1:{port}/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate "
         "verify failed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    impl = dev_stack_impl()
    d = tmp_path_factory.mktemp("pki")
    impl.make_ca(d, "ca")
    impl.make_ca(d, "other")
    here = "IP:127.0.0.1,DNS:localhost"
    impl.issue_certificate(d, "ca", "good", "localhost", here)
    impl.issue_certificate(d, "ca", "expired", "localhost", here, days=0)
    impl.issue_certificate(d, "ca", "elsewhere", "elsewhere.example", "DNS:elsewhere.example")
    time.sleep(1.2)  # "expired" was valid for the second it was made in
    return d


@contextlib.contextmanager
def tls_server(pki: Path, name: str) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting certificate ``name``; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(2)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_the_broker_an_error_is_about_is_read_from_librdkafka_s_words() -> None:
    assert broker_address(_SAID.format(port=9093)) == ("127.0.0.1", 9093)
    assert broker_address("sasl_ssl://b-1.kafka.example.com:9096/1: SSL handshake failed") == \
        ("b-1.kafka.example.com", 9096)
    assert broker_address("ssl://[::1]:9093/bootstrap: SSL handshake failed") == ("::1", 9093)
    assert broker_address("1/1 brokers are down") is None


@pytest.mark.parametrize(("name", "ca", "reason"), [
    ("expired", "ca", "certificate has expired"),
    ("good", "other", "unable to get local issuer certificate"),
    ("elsewhere", "ca", "IP address mismatch"),
])
def test_openssl_says_why_a_broker_certificate_is_not_trusted(
    pki: Path, name: str, ca: str, reason: str
) -> None:
    with tls_server(pki, name) as port:
        why = why_untrusted(_SAID.format(port=port), {"ssl.ca.location": str(pki / f"{ca}.pem")})
    assert why is not None and reason in why, why


def _trusting(pki: Path, setting: str, ca: str) -> dict[str, str]:
    """-X settings trusting CA ``ca`` through ``setting``: its file, or its PEM text inline."""
    pem = pki / f"{ca}.pem"
    return {setting: str(pem) if setting == "ssl.ca.location" else pem.read_text()}


@pytest.mark.parametrize(("name", "ca", "reason"), [
    ("expired", "ca", "certificate has expired"),
    ("good", "other", "unable to get local issuer certificate"),
])
def test_a_ca_given_inline_as_ssl_ca_pem_is_the_one_the_handshake_trusts(
    pki: Path, name: str, ca: str, reason: str
) -> None:
    """A CA given as PEM text (a secret in an environment variable, where no file is mounted).
    The probe used to trust the system's CAs then, and said "unable to get local issuer
    certificate" of an expired broker certificate: advice to fix the client's CA, not the
    brokers' certificate."""
    with tls_server(pki, name) as port:
        why = why_untrusted(_SAID.format(port=port), _trusting(pki, "ssl.ca.pem", ca))
    assert why is not None and reason in why, why


def test_the_cas_of_ssl_ca_location_and_ssl_ca_pem_are_trusted_together_as_librdkafka_does(pki: Path) -> None:
    """librdkafka 2.16 verifies a broker of either CA when both settings are given (checked by
    hand against this server), as in a move to a new CA that trusts both for a while."""
    with tls_server(pki, "good") as port:
        said = _SAID.format(port=port)
        for location, pem in (("other", "ca"), ("ca", "other")):
            both = {**_trusting(pki, "ssl.ca.location", location), **_trusting(pki, "ssl.ca.pem", pem)}
            assert why_untrusted(said, both) is None, (location, pem)
        # text librdkafka refuses at start: nothing to add
        assert why_untrusted(said, {"ssl.ca.pem": "not a certificate"}) is None


def test_the_advice_names_the_tls_settings_the_client_uses() -> None:
    """An operator whose CA is inline must be sent to ``ssl.ca.pem``, not to a file it has not."""
    untrusted = _SAID.format(port=9093)
    for properties, named in (({}, "Check -X ssl.ca.location:"),
                              ({"ssl.ca.location": "probe"}, "Check -X ssl.ca.location:"),
                              ({"ssl.ca.pem": "-----BEGIN…"}, "Check -X ssl.ca.pem:"),
                              ({"ssl.ca.location": "/ca.pem", "ssl.ca.pem": "-----BEGIN…"},
                               "Check -X ssl.ca.location and ssl.ca.pem:")):
        said = login_refused(-181, untrusted, "unable to get local issuer certificate", properties)
        assert said is not None and named in said, (properties, said)
    refused = ("ssl://k:9093/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad "
               "certificate")
    for properties, named in (({}, "Check -X ssl.certificate.location and ssl.key.location:"),
                              ({"ssl.certificate.pem": "…", "ssl.key.pem": "…"},
                               "Check -X ssl.certificate.pem and ssl.key.pem:"),
                              ({"ssl.keystore.location": "/client.p12", "ssl.keystore.password": "…"},
                               "Check -X ssl.keystore.location:")):
        said = login_refused(-195, refused, None, properties)
        assert said is not None and named in said, (properties, said)


def test_a_certificate_that_verifies_now_or_a_broker_that_does_not_answer_adds_nothing(pki: Path) -> None:
    with tls_server(pki, "good") as port:
        assert why_untrusted(_SAID.format(port=port), {"ssl.ca.location": str(pki / "ca.pem")}) is None
    with tls_server(pki, "elsewhere") as port:  # names are not checked: only the chain is
        unchecked = {"ssl.ca.location": str(pki / "ca.pem"), "ssl.endpoint.identification.algorithm": "none"}
        assert why_untrusted(_SAID.format(port=port), unchecked) is None
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    assert why_untrusted(_SAID.format(port=port), {"ssl.ca.location": str(pki / "ca.pem")}) is None


def test_an_expired_broker_certificate_is_said_to_be_the_brokers_to_renew() -> None:
    said = _SAID.format(port=9093)
    assert broker_untrusted(-181, said) and not broker_untrusted(-195, said)
    expired = login_refused(-181, said, "certificate has expired")
    assert expired is not None and "; asked again, OpenSSL says: certificate has expired)" in expired
    assert "renewed on the brokers' side" in expired and "ssl.ca.location" not in expired
    other = login_refused(-181, said, "unable to get local issuer certificate")
    assert other is not None and "Check -X ssl.ca.location" in other


def _run_stops_saying(pki: Path, monkeypatch: pytest.MonkeyPatch, server: str, trust: dict[str, str]) -> str:
    """A run of librdkafka against a real TLS server presenting certificate ``server`` (not a
    broker: the handshake is all that happens), with the -X settings ``trust``: it must stop with
    status 2 having asked OpenSSL once (the client repeats the error until it is closed); what it
    said."""
    from consumer import runner as runner_module

    asked: list[str] = []

    def counted(said: str, properties: Any, timeout: float = 3.0) -> str | None:
        asked.append(said)
        return why_untrusted(said, properties, timeout)

    monkeypatch.setattr(runner_module, "why_untrusted", counted)
    with tls_server(pki, server) as port:
        config = Config(bootstrap_servers=f"127.0.0.1:{port}", group_id="g", topics=("t",),
                        output="s3://bucket/out", schema="page_view",
                        kafka_properties={"security.protocol": "SSL", **trust})
        decoder = Decoder("raw", schema=load_schema("page_view"))
        runner = GroupRunner(config, store=MemoryStore(), decoder=decoder)
        with capture_logs() as logs:
            assert runner.run() == EXIT_CONFIG
    said: str = next(e["error"] for e in logs if e["event"].startswith("stopped: "))
    assert said.startswith("this client does not trust the Kafka broker's certificate ("), said
    assert len(asked) == 1, asked
    return said


@pytest.mark.parametrize("setting", ["ssl.ca.location", "ssl.ca.pem"])
def test_a_run_against_a_broker_whose_certificate_has_expired_stops_with_status_2_saying_so(
    pki: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """The handshake of our own trusts what the client trusts: a CA file, or the same CA inline."""
    said = _run_stops_saying(pki, monkeypatch, "expired", _trusting(pki, setting, "ca"))
    assert "OpenSSL says: certificate has expired" in said and "renewed on the brokers' side" in said, said


# -- revocation (ssl.crl.location) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def crls(pki: Path) -> Path:
    """In ``pki``: certificate ``revoked`` of CA ``ca``, and CRLs ``ca.crl`` (revoking it) and
    ``other.crl`` (CA ``other``'s, revoking nothing), made by ``openssl ca``."""
    dev_stack_impl().issue_certificate(pki, "ca", "revoked", "localhost", "IP:127.0.0.1,DNS:localhost")
    for ca, revoke in (("ca", "revoked.pem"), ("other", None)):
        (pki / f"{ca}.index").write_text("")
        (pki / f"{ca}.crlnumber").write_text("01\n")
        (pki / f"{ca}.cnf").write_text(f"[ ca ]\ndefault_ca = c\n[ c ]\ndatabase = {ca}.index\n"
                                       f"crlnumber = {ca}.crlnumber\ndefault_md = sha256\n"
                                       "default_crl_days = 30\n")
        signing = ["openssl", "ca", "-config", f"{ca}.cnf", "-keyfile", f"{ca}.key", "-cert", f"{ca}.pem"]
        for args in ([["-revoke", revoke]] if revoke else []) + [["-gencrl", "-out", f"{ca}.crl"]]:
            subprocess.run([*signing, *args], cwd=pki, check=True, capture_output=True)
    return pki


@pytest.mark.parametrize(("name", "crl", "reason"), [
    ("revoked", "ca", "certificate revoked"),
    ("good", "other", "unable to get certificate CRL"),
])
def test_a_crl_file_is_checked_as_librdkafka_checks_it(crls: Path, name: str, crl: str, reason: str) -> None:
    """librdkafka 2.16 with ``ssl.crl.location`` (checked by hand against this server): a broker
    certificate the CRL lists fails verification, and so does one whose CA has no CRL in the file.
    The probe used to verify both without the CRL, and named no reason."""
    trust = {"ssl.ca.location": str(crls / "ca.pem"), "ssl.crl.location": str(crls / f"{crl}.crl")}
    with tls_server(crls, name) as port:
        why = why_untrusted(_SAID.format(port=port), trust)
        assert why is not None and reason in why, why
    with tls_server(crls, "good") as port:
        ca_crl = {**trust, "ssl.crl.location": str(crls / "ca.crl")}
        assert why_untrusted(_SAID.format(port=port), ca_crl) is None


def test_a_revoked_broker_certificate_is_the_brokers_to_replace_and_a_crl_missing_is_the_clients() -> None:
    untrusted = _SAID.format(port=9093)
    crl = {"ssl.crl.location": "/crl.pem"}
    revoked = login_refused(-181, untrusted, "certificate revoked", crl)
    assert revoked is not None and "replaced on the brokers' side" in revoked, revoked
    assert "Check -X ssl.ca.location" not in revoked
    missing = login_refused(-181, untrusted, "unable to get certificate CRL", crl)
    assert missing is not None and "Check -X ssl.crl.location" in missing, missing


def test_a_run_against_a_broker_whose_certificate_is_revoked_stops_with_status_2_saying_so(
    crls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = {"ssl.ca.location": str(crls / "ca.pem"), "ssl.crl.location": str(crls / "ca.crl")}
    said = _run_stops_saying(crls, monkeypatch, "revoked", trust)
    assert "OpenSSL says: certificate revoked" in said and "replaced on the brokers' side" in said, said
