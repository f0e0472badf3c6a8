"""Why a broker's certificate failed verification, in OpenSSL's words.

librdkafka says "certificate verify failed" for every reason a broker's certificate is refused, and
the reasons have different owners: a CA the client's ``ssl.ca.location`` or ``ssl.ca.pem`` lacks (the client's
settings), a certificate that has expired (the brokers' operators), a name that is not the address
connected to (either). One handshake of our own with the same broker and the same trust settings
says which (``SSLCertVerificationError.verify_message``: "certificate has expired", "unable to get
local issuer certificate", "IP address mismatch, …"), as the Java client's exception does.

Asked once, when a run or `consumer check` is about to stop on such a refusal; never in the loop.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping

#: The broker a librdkafka error is about: ``ssl://host:port/…`` or ``sasl_ssl://host:port/…``.
_ADDRESS = re.compile(r"\b(?:sasl_)?ssl://(\[[^\]]+\]|[^:/\s]+):(\d+)/", re.IGNORECASE)


def broker_address(said: str) -> tuple[str, int] | None:
    """The host and port librdkafka's error ``said`` names, or None."""
    m = _ADDRESS.search(said)
    return None if m is None else (m.group(1).strip("[]"), int(m.group(2)))


def why_untrusted(said: str, properties: Mapping[str, object], timeout: float = 3.0) -> str | None:
    """OpenSSL's reason for refusing the certificate of the broker ``said`` names, trusting what
    the client's ``properties`` (its ``-X`` settings) make it trust; None when it cannot tell (no
    address in ``said``, no answer, or the certificate verifies now)."""
    address = broker_address(said)
    if address is None:
        return None
    try:
        context = _trusting(properties)
    except (OSError, ValueError):  # a file or PEM text librdkafka would have refused at start
        return None
    if str(properties.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
        context.check_hostname = False
    try:
        with socket.create_connection(address, timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=address[0]):
            return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc.reason or "") or None
    except (OSError, ValueError):
        return None


def _trusting(properties: Mapping[str, object]) -> ssl.SSLContext:
    """A client context trusting what librdkafka trusts with these ``-X`` settings: the CAs of
    ``ssl.ca.location`` (a file or a directory) and of ``ssl.ca.pem`` (PEM text, as given inline
    where no file can be mounted) together, or the system's CAs when neither is set; with
    ``ssl.crl.location``, a broker certificate its CRLs list is refused as revoked. Trusting the
    system's CAs instead of an inline CA turned an expired broker certificate into "unable to get
    local issuer certificate", and the advice to the client's settings instead of the brokers'."""
    ca = str(properties.get("ssl.ca.location") or "")
    pem = str(properties.get("ssl.ca.pem") or "") or None
    located = ca not in ("", "probe")
    if not located and pem is None:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=ca if located and not os.path.isdir(ca) else None,
                                             capath=ca if located and os.path.isdir(ca) else None, cadata=pem)
    crl = str(properties.get("ssl.crl.location") or "")
    if crl:  # as librdkafka: the CRLs of that file, checked for the broker's own certificate
        context.load_verify_locations(cafile=crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context
