"""The principal a Kafka cluster sees this client as, so that a refusal can name the ACL to grant.

Why this exists: a broker that refuses an operation (TOPIC_ or GROUP_AUTHORIZATION_FAILED) does not
say whom it refused, and ``kafka-acls --allow-principal`` needs that name exactly. With Kafka's
default principal builder it follows from the client's own settings:

- a SASL/PLAIN or SCRAM login is ``User:<sasl.username>``;
- an OAUTHBEARER login with librdkafka's unsecured token (``sasl.oauthbearer.config`` with
  ``principal=…``) is ``User:<that principal>``;
- a TLS client certificate (``security.protocol=SSL``) is ``User:<its subject>``, the subject
  written as Java's ``X500Principal.getName()`` writes it (RFC 2253: last name part first, ``,``
  between parts, ``\\`` before ``,=+<>#;"\\``), which ``ssl.principal.mapping.rules=DEFAULT``
  keeps as it is (``CN=reader,O=Acme\\, Inc.,C=DE``);
- a client with neither a login nor a certificate is ``User:ANONYMOUS``.

Kerberos (rules map its name), OAuth tokens of an identity provider (a claim of the token), a
keystore in PKCS#12 and brokers with their own ``principal.builder.class`` or mapping rules are
not named: the message then says "the principal the -X security settings log in as".

Reading the certificate is the one I/O here (:func:`client_principal`); the rest is pure.
:func:`rfc2253` is checked against Java itself (tests/unit/test_principal.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from consumer.kafka_names import Principal

__all__ = ["DerError", "certificate_subject", "client_principal", "login_principal", "rfc2253"]

#: The SASL mechanisms whose login name is, by Kafka's default principal builder, the principal
#: ACLs name (``User:<sasl.username>``).
_NAMED_BY_USERNAME = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})


class DerError(ValueError):
    """The bytes are not the DER encoding of what was expected (a certificate, a name)."""


def login_principal(properties: Mapping[str, object], subject: str | None = None) -> Principal | None:
    """The principal the cluster sees a client with these ``-X`` ``properties`` as, by Kafka's
    default principal builder, when they say it; ``subject`` is its TLS certificate's subject
    (:func:`certificate_subject`) when it presents one. None when the settings do not say."""
    protocol = str(properties.get("security.protocol", "plaintext")).upper()
    if protocol.startswith("SASL_"):
        mechanism = str(properties.get("sasl.mechanism", properties.get("sasl.mechanisms", "GSSAPI")))
        mechanism = mechanism.upper()
        username = properties.get("sasl.username")
        if mechanism in _NAMED_BY_USERNAME and username:
            return Principal(f"User:{username}", "what the -X SASL login maps to by default")
        unsecured = _unsecured_token_principal(properties) if mechanism == "OAUTHBEARER" else None
        if unsecured:
            return Principal(f"User:{unsecured}", "the principal of the -X sasl.oauthbearer.config token")
        return None
    if protocol == "SSL" and subject is not None:
        return Principal(f"User:{subject}", "what the -X TLS client certificate's subject maps to by default")
    if protocol in ("PLAINTEXT", "SSL") and not _presents_certificate(properties):
        return Principal("User:ANONYMOUS", "what Kafka calls a client with no login and no certificate")
    return None


def _unsecured_token_principal(properties: Mapping[str, object]) -> str | None:
    """``principal=…`` of ``sasl.oauthbearer.config``: the subject of the unsecured token librdkafka
    makes when no identity provider is set (``sasl.oauthbearer.method`` default)."""
    if str(properties.get("sasl.oauthbearer.method", "default")).lower() != "default":
        return None
    for part in str(properties.get("sasl.oauthbearer.config", "")).split():
        key, _, value = part.partition("=")
        if key == "principal" and value:
            return value
    return None


#: The -X properties by which librdkafka presents a client certificate: a PEM file or text, a
#: PKCS#12 keystore, or an OpenSSL engine (an HSM) that holds it.
_CERTIFICATE_SOURCES = ("ssl.certificate.location", "ssl.certificate.pem", "ssl.keystore.location",
                        "ssl.engine.location", "ssl.engine.id")


def _presents_certificate(properties: Mapping[str, object]) -> bool:
    return any(properties.get(k) for k in _CERTIFICATE_SOURCES)


def client_principal(properties: Mapping[str, object]) -> Principal | None:
    """:func:`login_principal` with the subject of the client certificate the properties name
    (``ssl.certificate.location`` or ``ssl.certificate.pem``), read now; a certificate that cannot
    be read leaves the principal unnamed rather than failing the message that asked."""
    subject = None
    if str(properties.get("security.protocol", "plaintext")).upper() == "SSL":
        try:
            pem = properties.get("ssl.certificate.pem")
            location = properties.get("ssl.certificate.location")
            if pem:
                subject = certificate_subject(str(pem))
            elif location:
                subject = certificate_subject(Path(str(location)).read_text(errors="replace"))
        except (OSError, ValueError):
            return None
    return login_principal(properties, subject)


def certificate_subject(pem: str) -> str:
    """The subject of the first certificate in ``pem``, as Kafka's default principal names it."""
    der = ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
    certificate = _only(der, 0x30)
    tbs = _only(_split(certificate)[0], 0x30)
    fields = _split(tbs)
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    if len(fields) < 5:
        raise DerError("a certificate has serial, signature, issuer, validity and subject")
    return rfc2253(fields[4])


#: The attribute types Java names by keyword in RFC 2253 form; every other is its dotted OID.
_KEYWORDS = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
#: ASN.1 string types Java writes as text (UTF8String, PrintableString, T61String, IA5String,
#: GeneralString, BMPString), decoding their bytes as UTF-8 whatever the type says (a BMPString's
#: zero bytes come out as ``\00``); any other value is written as ``#`` and the hex of its DER
#: encoding.
_STRING_TAGS = frozenset({0x0C, 0x13, 0x14, 0x16, 0x1B, 0x1E})
_ESCAPED = frozenset(',=+<>#;"\\')


def rfc2253(name: bytes) -> str:
    """A DER-encoded X.500 ``Name`` (a SEQUENCE of SETs of type and value) as Java's
    ``X500Principal.getName()`` writes it: the last part first."""
    parts = []
    for rdn in _split(_only(name, 0x30)):
        if rdn[0] != 0x31:
            raise DerError("a name part is a SET")
        parts.append("+".join(_attribute(ava) for ava in _split(_content(rdn))))
    return ",".join(reversed(parts))


def _attribute(ava: bytes) -> str:
    fields = _split(_only(ava, 0x30))
    if len(fields) != 2 or fields[0][0] != 0x06:
        raise DerError("an attribute is an OID and a value")
    oid = _oid(_content(fields[0]))
    value = fields[1]
    keyword = _KEYWORDS.get(oid)
    if keyword is None or value[0] not in _STRING_TAGS:
        return f"{keyword or oid}=#{value.hex()}"
    try:
        text = _content(value).decode("utf-8")
    except UnicodeDecodeError:  # Java replaces bad bytes by its own rules, not Python's
        raise DerError("a name's text is not UTF-8") from None
    return f"{keyword}={_escape(text)}"


def _escape(text: str) -> str:
    out = ["\\" + c if c in _ESCAPED else "\\00" if c == "\0" else c for c in text]
    lead = next((i for i, c in enumerate(text) if c not in " \r"), len(text))
    trail = next((i for i in range(len(text) - 1, -1, -1) if text[i] not in " \r"), -1)
    return "".join("\\" + s if i < lead or i > trail else s for i, s in enumerate(out))


def _oid(body: bytes) -> str:
    if not body:
        raise DerError("an empty OID")
    arcs, value = [], 0
    for byte in body:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _header(data: bytes, at: int) -> tuple[int, int]:
    """(start of the content, its end) of the element at ``at`` (single-byte tags, definite lengths)."""
    if at + 2 > len(data):
        raise DerError("truncated")
    length, at = data[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or at + size > len(data):
            raise DerError("a bad length")
        length, at = int.from_bytes(data[at:at + size], "big"), at + size
    if at + length > len(data):
        raise DerError("truncated")
    return at, at + length


def _split(content: bytes) -> list[bytes]:
    """The elements (tag, length and content each) one after another in ``content``."""
    elements, at = [], 0
    while at < len(content):
        _, end = _header(content, at)
        elements.append(content[at:end])
        at = end
    return elements


def _content(element: bytes) -> bytes:
    start, end = _header(element, 0)
    return element[start:end]


def _only(element: bytes, tag: int) -> bytes:
    """The content of ``element``, which must be one element with ``tag`` and nothing after it."""
    if not element or element[0] != tag:
        raise DerError(f"expected tag {tag:#x}")
    start, end = _header(element, 0)
    if end != len(element):
        raise DerError("bytes after the element")
    return element[start:end]
