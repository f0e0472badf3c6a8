"""The principal a refusal names (consumer/principal.py), and a TLS certificate's subject written
exactly as Kafka's brokers write it: checked against Java's own ``X500Principal.getName()`` (the
JDK the stack's broker runs on), on generated names and on certificates openssl made."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import dev_stack_impl

from consumer.kafka_names import Principal, not_authorized
from consumer.principal import DerError, certificate_subject, client_principal, login_principal, rfc2253

# -- whom the settings log in as -------------------------------------------------------------
SCRAM = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "etl"}


@pytest.mark.parametrize(("properties", "subject", "name"), [
    (SCRAM, None, "User:etl"),
    ({**SCRAM, "sasl.mechanism": "plain"}, None, "User:etl"),
    ({**SCRAM, "sasl.mechanisms": "PLAIN", "sasl.mechanism": "PLAIN"}, None, "User:etl"),
    ({**SCRAM, "sasl.mechanism": "OAUTHBEARER"}, None, None),  # an identity provider's token
    ({**SCRAM, "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.config": "principal=svc scope=x"},
     None, "User:svc"),
    ({**SCRAM, "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.config": "principal=svc",
      "sasl.oauthbearer.method": "oidc"}, None, None),
    ({k: v for k, v in SCRAM.items() if k != "sasl.mechanism"}, None, None),  # GSSAPI: by rules
    ({**SCRAM, "security.protocol": "SSL"}, None, "User:ANONYMOUS"),  # TLS with no certificate
    ({}, None, "User:ANONYMOUS"),  # plaintext
    ({"security.protocol": "ssl"}, "CN=reader,O=Acme\\, Inc.", "User:CN=reader,O=Acme\\, Inc."),
    ({"security.protocol": "SSL", "ssl.keystore.location": "k.p12"}, None, None),  # PKCS#12: unread
    ({"security.protocol": "SSL", "ssl.engine.id": "pkcs11"}, None, None),  # a certificate in an HSM
    ({**SCRAM, "ssl.certificate.location": "c.pem"}, "CN=x", "User:etl"),  # SASL names it
])
def test_the_principal_follows_from_the_login_settings(
    properties: dict[str, str], subject: str | None, name: str | None
) -> None:
    found = login_principal(properties, subject)
    assert (found.name if found else None) == name


def test_the_grant_names_the_principal_quoted_for_the_shell() -> None:
    """Kafka's answer names no principal; the command to paste must name it exactly, and a
    certificate's subject has spaces and backslashes."""
    sasl = Principal("User:etl", "what the -X SASL login maps to by default")
    topic = not_authorized(29, "events", "g", "Topic authorization failed", sasl)
    assert topic is not None and "grant the principal User:etl (what the -X SASL login maps" in topic
    assert "--allow-principal User:etl --operation Read --operation Describe --topic events" in topic
    group = not_authorized(30, None, "g", "Group authorization failed.", sasl)
    assert group is not None and "--allow-principal User:etl --operation Read --group g" in group
    dn = Principal("User:CN=etl reader,O=Acme\\, Inc.", "what the certificate's subject maps to")
    topic = not_authorized(29, "events", "g", "Topic authorization failed", dn)
    assert topic is not None and "grant the principal User:CN=etl reader,O=Acme\\, Inc. (what" in topic
    assert "--allow-principal 'User:CN=etl reader,O=Acme\\, Inc.' --operation Read" in topic
    assert "the principal the -X security settings log in as" in str(not_authorized(30, None, "g", "x"))


# -- Java as the reference -----------------------------------------------------------------
_ORACLE = """
import javax.security.auth.x500.X500Principal;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.security.cert.*;
import java.util.HexFormat;
public class Names {
  public static void main(String[] a) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
    CertificateFactory x509 = CertificateFactory.getInstance("X.509");
    String line;
    while ((line = in.readLine()) != null) {
      try {
        X500Principal p = line.startsWith("@")
            ? ((X509Certificate) x509.generateCertificate(new FileInputStream(line.substring(1))))
                  .getSubjectX500Principal()
            : new X500Principal(HexFormat.of().parseHex(line));
        System.out.println(HexFormat.of().formatHex(p.getName().getBytes(StandardCharsets.UTF_8)));
      } catch (Exception e) {
        System.out.println("error " + e);
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def java_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("java") / "Names.java"
    source.write_text(_ORACLE)
    return source


def ask_java(source: Path, lines: list[str]) -> list[str]:
    """Java's ``getName()`` of each name (hex of its DER) or ``@<certificate path>``, one JVM."""
    java = dev_stack_impl()._java()
    res = subprocess.run([java, str(source)], input="".join(f"{line}\n" for line in lines),
                         capture_output=True, text=True, timeout=120, check=True)
    answers = res.stdout.splitlines()
    assert len(answers) == len(lines), res.stderr[-2000:]
    return [a if a.startswith("error") else bytes.fromhex(a).decode() for a in answers]


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = bytes([n]) if n < 128 else bytes([0x80 | (n.bit_length() + 7) // 8]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + content


def oid(arcs: tuple[int, ...]) -> bytes:
    out = bytearray()
    for arc in (40 * arcs[0] + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | arc & 0x7F)
        out += bytes(reversed(chunk))
    return tlv(6, bytes(out))


_TYPES = [(2, 5, 4, 3), (2, 5, 4, 6), (2, 5, 4, 7), (2, 5, 4, 8), (2, 5, 4, 10), (2, 5, 4, 11),
          (2, 5, 4, 9), (0, 9, 2342, 19200300, 100, 1, 25), (0, 9, 2342, 19200300, 100, 1, 1),
          (1, 2, 840, 113549, 1, 9, 1), (2, 5, 4, 5), (1, 3, 6, 1, 4, 1, 99999, 1), (2, 999, 3)]
_TEXT = st.text(st.sampled_from("aZ09 .-_@" + ',=+<>#;"\\' + "\r\n\t\0" + "éü中😀"), max_size=8)


@st.composite
def values(draw: st.DrawFn) -> bytes:
    """An attribute value: text in every string type (BMP as UTF-16, which Java still reads as
    UTF-8), types Java writes as hex, and raw bytes that need not be UTF-8."""
    tag = draw(st.sampled_from([0x0C, 0x13, 0x14, 0x16, 0x1B, 0x1E, 0x1C, 0x12, 0x1A, 0x04, 0x02]))
    encoding = {0x1E: "utf-16-be", 0x1C: "utf-32-be"}.get(tag, "utf-8")
    body = draw(st.one_of(_TEXT.map(lambda t: t.encode(encoding)), st.binary(max_size=6)))
    return tlv(tag, body)


names = st.lists(
    st.lists(st.tuples(st.sampled_from(_TYPES), values()), min_size=1, max_size=3).map(
        lambda avas: tlv(0x31, b"".join(tlv(0x30, oid(t) + v) for t, v in avas))),
    max_size=4,
).map(lambda rdns: tlv(0x30, b"".join(rdns)))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=50, max_size=150))
def test_a_name_is_written_as_java_writes_it(java_names: Path, batch: list[bytes]) -> None:
    """Every name as Java writes it, or (text that is not UTF-8, which Java replaces by rules of
    its own) a DerError: such a principal is left unnamed rather than named wrong."""
    for der, java in zip(batch, ask_java(java_names, [n.hex() for n in batch]), strict=True):
        try:
            ours = rfc2253(der)
        except DerError:
            assert "\ufffd" in java, (der.hex(), java)
            continue
        assert ours == java, der.hex()


def test_a_certificate_s_subject_is_the_principal_java_reads_from_it(
    java_names: Path, tmp_path: Path
) -> None:
    impl = dev_stack_impl()
    impl.make_ca(tmp_path, "ca")
    subjects = ["/CN=consumer-test", "/C=DE/ST=Berlin/O=Acme, Inc./OU=R\\+D/CN= etl=reader #1 ",
                "/DC=com/DC=example/OU=Data Platform/CN=Zoë 中/emailAddress=etl@example.com",
                "/CN=a+UID=b/O=x;y<z>"]
    certs = [impl.issue_certificate(tmp_path, "ca", f"c{i}", "-", subject=s) for i, s in enumerate(subjects)]
    java = ask_java(java_names, [f"@{c}" for c in certs])
    assert java[0] == "CN=consumer-test"
    assert java[1] == "CN=\\ etl\\=reader \\#1\\ ,OU=R\\+D,O=Acme\\, Inc.,ST=Berlin,C=DE"
    for cert, name in zip(certs, java, strict=True):
        assert certificate_subject(cert.read_text()) == name
        properties = {"security.protocol": "SSL", "ssl.certificate.location": str(cert)}
        assert client_principal(properties) == Principal(
            f"User:{name}", "what the -X TLS client certificate's subject maps to by default")
        assert client_principal({"security.protocol": "SSL", "ssl.certificate.pem": cert.read_text()}) \
            == client_principal(properties)


def test_a_certificate_that_cannot_be_read_leaves_the_principal_unnamed(tmp_path: Path) -> None:
    """The refusal's message must not fail for it: it falls back to the settings' words."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for location in (tmp_path / "missing.pem", garbage, tmp_path):
        properties = {"security.protocol": "SSL", "ssl.certificate.location": str(location)}
        assert client_principal(properties) is None
    assert client_principal({"security.protocol": "SSL", "ssl.certificate.pem": "not a certificate"}) is None
    with pytest.raises(DerError):
        rfc2253(b"\x30\x05\x31\x03\x30")  # truncated
    assert client_principal(SCRAM) == Principal("User:etl", "what the -X SASL login maps to by default")
