"""Names for Kafka things that several modules share, defined once.

Kept free of confluent-kafka so that the pure layer can use them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

#: A partition of a topic, as every module keys it: ``(topic, partition number)``.
TP = tuple[str, int]

#: librdkafka's code (``KafkaError._PARTITION_EOF``) for "the fetch reached the end of the
#: partition", delivered as a message's error when ``enable.partition.eof`` is on.
PARTITION_EOF = -191
#: Kafka's UNKNOWN_TOPIC_OR_PART: a topic's metadata error when it does not exist (or, to a
#: principal that may not describe it, seems not to), and what a fetch says once it is deleted.
UNKNOWN_TOPIC_OR_PART = 3

#: Kafka's codes for "this principal may not" (TOPIC_, GROUP_, CLUSTER_AUTHORIZATION_FAILED):
#: the ACL each run needs, by code. A broker also answers TOPIC_AUTHORIZATION_FAILED for a topic
#: that does not exist, to a principal that may not describe it.
NOT_AUTHORIZED = {29: "topic", 30: "group", 31: "cluster"}


class Principal(NamedTuple):
    """Whom the cluster sees this client as (``User:…``, what ``kafka-acls --allow-principal``
    takes) and why that is the name, for an operator reading a refusal (``consumer.principal``)."""

    name: str
    because: str


def not_authorized(
    code: int, topic: str | None, group: str | None, said: str, principal: Principal | None = None
) -> str | None:
    """What to tell an operator whose cluster refuses this client an operation (``code``, one of
    :data:`NOT_AUTHORIZED`; ``said``: the client's own words), or None for another error. Kafka
    names no principal in its answer: the remedy names the one the -X security settings log in
    as when they say it (``consumer.principal``), and asks for the ACLs of a Kafka Connect or
    Java consumer (READ and DESCRIBE on each topic, READ on the group)."""
    what = NOT_AUTHORIZED.get(code)
    if what is None:
        return None
    who = f"the principal {principal.name} ({principal.because})" if principal else \
        "the principal the -X security settings log in as"
    user = shlex.quote(principal.name) if principal else "User:<name>"
    if what == "topic":
        name = f"topic {topic!r}" if topic else "a subscribed topic"
        return (
            f"Kafka does not authorize this client to read {name} ({said}); a broker says the same "
            f"of a topic that does not exist. Check --topic, and grant {who} READ and DESCRIBE on "
            f"it (kafka-acls --add --allow-principal {user} --operation Read --operation Describe "
            f"--topic {topic or '<topic>'}), then start again. Everything committed is durable."
        )
    if what == "group":
        name = f"consumer group {group!r}" if group else "its consumer group (--group-id)"
        return (
            f"Kafka does not authorize this client to use {name} ({said}). Grant {who} READ on it "
            f"(kafka-acls --add --allow-principal {user} --operation Read --group "
            f"{group or '<group>'}), then start again. Everything committed is durable."
        )
    return (
        f"Kafka does not authorize this client for a cluster operation ({said}): see the broker's "
        f"authorizer log for the operation, grant it to {who}, then start again. Everything "
        "committed is durable."
    )


#: librdkafka's code (``KafkaError._AUTHENTICATION``) for "a broker refused this client's login"
#: and Kafka's SASL_AUTHENTICATION_FAILED: a wrong user or password, a SCRAM password changed on
#: the cluster while the client still logs in with the old one (connections log in again every
#: ``connections.max.reauth.ms``), a mechanism the listener does not enable.
LOGIN_REFUSED = frozenset({-169, 58})


#: OpenSSL's words when this client does not trust a broker's certificate: a chain no CA in
#: ``ssl.ca.location`` signed (a certificate rotated to a new CA), an expired certificate, or a name
#: that is not the address connected to. librdkafka says them in a failed handshake's error (code
#: ``_SSL``); the same handshake fails on every try until the client's settings or the broker's
#: certificate change. A handshake cut short (a broker restarting) says other words, and is retried.
UNTRUSTED_CERTIFICATE = "certificate verify failed"
#: librdkafka's ``KafkaError._SSL``.
_SSL = -181
#: The TLS alerts a broker sends a client whose certificate it refuses (mutual TLS): an expired
#: one (a Java broker says "certificate unknown"), one of a CA it does not trust or none at all
#: ("bad certificate"), a revoked one. librdkafka says them when its first request's answer is
#: read (code ``_TRANSPORT``: "Receive failed: … ssl/tls alert bad certificate"); like an untrusted
#: broker, they come again on every try until a certificate changes.
CERTIFICATE_REFUSED = re.compile(
    r"alert (bad certificate|certificate (unknown|expired|revoked|required)|unknown ca)")
_TRANSPORT = -195
#: librdkafka's ``KafkaError._ALL_BROKERS_DOWN``: every broker the client knows failed its last
#: connection: refused it, was not found by name, or closed it at the handshake. A broker that is
#: silent (a firewall dropping the connection) counts only once its connection setup times out
#: (``socket.connection.setup.timeout.ms``, 30 s), so within a short wait this is an answer.
ALL_BROKERS_DOWN = -187


def broker_untrusted(code: int, said: str) -> bool:
    """Whether the client error (``code``, ``said``) is a broker certificate this client does not
    trust: the case where a handshake of our own says why (``consumer.tls_probe``)."""
    return code == _SSL and UNTRUSTED_CERTIFICATE in said


#: The -X settings that make a client trust a broker's certificate. librdkafka trusts the CAs of
#: both when both are set (2.16: a broker of either CA verifies), and the system's CAs when neither is.
TRUST_SETTINGS = ("ssl.ca.location", "ssl.ca.pem")
#: The -X settings by which a client presents its own certificate and key (mutual TLS); the
#: files are what the advice names when the settings name none.
CERTIFICATE_SETTINGS = ("ssl.certificate.location", "ssl.certificate.pem", "ssl.key.location", "ssl.key.pem",
                        "ssl.keystore.location")
_FILES = ("ssl.certificate.location", "ssl.key.location")


def _settings_named(
    properties: Mapping[str, object] | None, names: tuple[str, ...], default: tuple[str, ...]
) -> str:
    """The settings of ``names`` the client's ``properties`` set ("a, b and c"), else ``default``'s:
    the ones an operator must look at are the ones this deployment uses."""
    used = [n for n in names if properties and properties.get(n) not in (None, "", "probe")] or list(default)
    return used[0] if len(used) == 1 else f"{', '.join(used[:-1])} and {used[-1]}"


def login_refused(
    code: int, said: str, why: str | None = None, properties: Mapping[str, object] | None = None
) -> str | None:
    """What to tell an operator whose cluster refuses this client's login (``said``: the client's
    own words, which name the mechanism and never the password), or whose broker's certificate
    this client does not trust (``why``: OpenSSL's reason, when a handshake of our own said it), or
    whose own certificate a broker refuses (TLS: like the Java client's SslAuthenticationException,
    an AuthenticationException), or None for another error. Not an outage to wait out: the same
    login is refused again on every try. The advice names the TLS settings the client's -X
    ``properties`` use (a CA given inline as ``ssl.ca.pem``, a keystore), else the usual files."""
    if broker_untrusted(code, said):
        if why and "expired" in why:
            advice = ("A certificate of the broker's chain has expired: it is renewed on the brokers' side, "
                      "and no setting of this client makes it trusted. Then start again.")
        elif why and "revoked" in why:
            advice = ("The broker's certificate is revoked (the CRL of -X ssl.crl.location lists it): it is "
                      "replaced on the brokers' side with one its CA has not revoked. Then start again.")
        elif why and "unable to get certificate CRL" in why:
            advice = ("Check -X ssl.crl.location: it holds no CRL of the CA that signed the broker's "
                      "certificate, and with a CRL file set, librdkafka needs one for every broker "
                      "certificate. Then start again.")
        else:
            trust = _settings_named(properties, TRUST_SETTINGS, TRUST_SETTINGS[:1])
            advice = (f"Check -X {trust}: the CA that signed the brokers' certificates (after the "
                      "cluster moves to a new CA, trust both until every broker has moved), and that the "
                      "bootstrap address is a name in the certificate; `consumer check` tries them. Then "
                      "start again.")
        checked = f"; asked again, OpenSSL says: {why}" if why else ""
        return (f"this client does not trust the Kafka broker's certificate ({said}{checked}). {advice} "
                "Everything committed is durable; rows not yet committed are consumed again.")
    if code in (_SSL, _TRANSPORT) and CERTIFICATE_REFUSED.search(said):
        mine = _settings_named(properties, CERTIFICATE_SETTINGS, _FILES)
        return (
            f"the Kafka broker refused this client's certificate ({said}). Check -X "
            f"{mine}: a certificate that has not expired, "
            "signed by a CA the brokers trust (after a renewal, start with the new one; a CA the "
            "cluster stopped trusting needs a certificate of the one it trusts now); `consumer check` "
            "tries them. Then start again. Everything committed is durable; rows not yet committed "
            "are consumed again."
        )
    if code not in LOGIN_REFUSED:
        return None
    return (
        f"Kafka refused this client's login ({said}). Check the -X security settings: "
        "sasl.username and sasl.password (after a password change or a rotated secret on the "
        "cluster's side, start with the new one), and that sasl.mechanism is one the listener "
        "enables; `consumer check` tries them. Then start again. Everything committed is durable; "
        "rows not yet committed are consumed again."
    )


@dataclass(frozen=True)
class GroupView:
    """What the coordinator says about a consumer group (DescribeGroups): whether it is stable (no
    rebalance under way) and each member's assigned partitions, by member id. Read by the orphan
    watch about this group, and by recovery about a group whose output it would adopt."""

    stable: bool
    members: Mapping[str, frozenset[TP]]
