"""Unit tests for consumer.storage's pure parts: plan_parts, classify, RetryPolicy.

plan_parts runs with tiny part sizes (min_part=50, target_part=80) so hypothesis can explore many
shapes quickly; CopyRange lengths still go up to 20 MiB, checked symbolically (as runs of
(source, start, end)) instead of by materialising the bytes. A second property materialises small
inputs for real, with the source bytes a deterministic function of (key, position).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumer.storage import (
    CopyRange,
    RetryPolicy,
    Segment,
    classify,
    expires_current_under,
    expires_noncurrent_under,
    needs_equal_parts,
    plan_equal_parts,
    plan_parts,
    refusal,
)

MIN_PART = 50
TARGET_PART = 80
MiB = 1024 * 1024
FAST = settings(max_examples=400, deadline=None)

Run = tuple[str | bytes, int, int]  # (source key, or the literal bytes object; start; end)


def seg_len(seg: Segment) -> int:
    return seg.length if isinstance(seg, CopyRange) else len(seg)


def part_len(part: list[Segment]) -> int:
    return sum(seg_len(s) for s in part)


def is_copy_part(part: list[Segment], min_part: int = MIN_PART) -> bool:
    """What S3Store.compose copies server-side: exactly one range of ≥ min_part bytes."""
    return len(part) == 1 and isinstance(part[0], CopyRange) and part[0].length >= min_part


def runs(segments: list[Segment]) -> list[Run]:
    """Byte-exact symbolic content: adjacent contiguous ranges of one key are coalesced."""
    out: list[Run] = []
    for seg in segments:
        if isinstance(seg, CopyRange):
            if seg.length <= 0:
                continue
            src, start, end = seg.key, seg.start, seg.end
            if out and isinstance(out[-1][0], str) and out[-1][0] == src and out[-1][2] == start:
                out[-1] = (src, out[-1][1], end)
                continue
            out.append((src, start, end))
        elif seg:
            out.append((seg, 0, len(seg)))
    return out


def source_byte(key: str, pos: int) -> int:
    return (pos * 31 + sum(map(ord, key)) * 7 + (pos >> 8)) % 251


def materialise(segments: list[Segment]) -> bytes:
    out = bytearray()
    for seg in segments:
        if isinstance(seg, CopyRange):
            out.extend(source_byte(seg.key, p) for p in range(seg.start, seg.end))
        else:
            out.extend(seg)
    return bytes(out)


def copy_range(max_len: int) -> st.SearchStrategy[Segment]:
    return st.builds(
        lambda key, start, length: CopyRange(key, start, start + length),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 10_000),
        st.integers(0, max_len),
    )


def literal(max_len: int) -> st.SearchStrategy[Segment]:
    return st.binary(max_size=max_len)


BIG_SEGMENTS = st.lists(
    st.one_of(copy_range(200), copy_range(20 * MiB), literal(200)), max_size=25
)
SMALL_SEGMENTS = st.lists(st.one_of(copy_range(300), literal(120)), max_size=20)


def check_plan(segments: list[Segment], parts: list[list[Segment]], min_part: int, target: int) -> None:
    # parts are non-empty and hold no empty segment
    assert all(part for part in parts)
    assert all(seg_len(s) > 0 for part in parts for s in part)
    # every part but the last is a legal S3 part
    for i, part in enumerate(parts[:-1]):
        assert part_len(part) >= min_part, (i, part)
    # in order, the parts are exactly the input bytes
    assert runs(list(itertools.chain.from_iterable(parts))) == runs(segments)
    # bounded memory: a client-side part never holds more than target + the largest segment
    biggest = max((seg_len(s) for s in segments), default=0)
    for part in parts:
        if not is_copy_part(part, min_part):
            assert part_len(part) <= target + biggest, part
    # big ranges stay server-side: at most min_part bytes of a range ≥ 2·min_part pass the client
    for seg in segments:
        if isinstance(seg, CopyRange) and seg.length >= 2 * min_part:
            client = sum(
                max(0, min(s.end, seg.end) - max(s.start, seg.start))
                for part in parts if not is_copy_part(part, min_part)
                for s in part
                if isinstance(s, CopyRange) and s.key == seg.key
            )
            # overlapping inputs of one key can share bytes; bound only holds per-range here
            if sum(1 for o in segments if isinstance(o, CopyRange) and o.key == seg.key) == 1:
                assert client < min_part, (seg, parts)


@FAST
@given(segments=BIG_SEGMENTS)
def test_plan_parts_properties_large_ranges(segments: list[Segment]) -> None:
    parts = plan_parts(segments, min_part=MIN_PART, target_part=TARGET_PART)
    check_plan(segments, parts, MIN_PART, TARGET_PART)


@FAST
@given(segments=SMALL_SEGMENTS, min_part=st.integers(1, 120), extra=st.integers(0, 100))
def test_plan_parts_reproduces_bytes(segments: list[Segment], min_part: int, extra: int) -> None:
    target = min_part + extra
    parts = plan_parts(segments, min_part=min_part, target_part=target)
    check_plan(segments, parts, min_part, target)
    assert b"".join(materialise(p) for p in parts) == materialise(segments)


@FAST
@given(segments=BIG_SEGMENTS)
def test_plan_parts_is_deterministic(segments: list[Segment]) -> None:
    one = plan_parts(segments, min_part=MIN_PART, target_part=TARGET_PART)
    two = plan_parts(list(segments), min_part=MIN_PART, target_part=TARGET_PART)
    assert one == two


def test_plan_parts_empty() -> None:
    assert plan_parts([], min_part=MIN_PART, target_part=TARGET_PART) == []
    assert plan_parts([b"", CopyRange("a", 5, 5)], min_part=MIN_PART, target_part=TARGET_PART) == []


def test_plan_parts_final_file_shape() -> None:
    """Header magic + big piece bodies + small footer: big bodies copied, tiny bits borrowed."""
    segs: list[Segment] = [b"PAR1", CopyRange("p1", 4, 1004), CopyRange("p2", 4, 1004), b"footer"]
    parts = plan_parts(segs, min_part=MIN_PART, target_part=TARGET_PART)
    assert parts == [
        [b"PAR1", CopyRange("p1", 4, 50)],
        [CopyRange("p1", 50, 1004)],
        [CopyRange("p2", 4, 1004)],
        [b"footer"],
    ]


def test_plan_parts_small_pieces_are_concatenated_client_side() -> None:
    segs: list[Segment] = [b"PAR1", *(CopyRange(f"p{i}", 4, 24) for i in range(10)), b"footer"]
    parts = plan_parts(segs, min_part=MIN_PART, target_part=TARGET_PART)
    assert not any(is_copy_part(p) for p in parts)
    assert all(part_len(p) >= MIN_PART for p in parts[:-1])
    assert runs(list(itertools.chain.from_iterable(parts))) == runs(segs)


def test_plan_parts_default_sizes_are_s3_legal() -> None:
    five = 5 * MiB
    segs: list[Segment] = [b"PAR1", CopyRange("a", 4, 4 + 6 * MiB), CopyRange("b", 4, 4 + 100),
                           CopyRange("c", 4, 4 + 9 * MiB), b"x" * 100]
    parts = plan_parts(segs)
    assert all(part_len(p) >= five for p in parts[:-1])
    assert runs(list(itertools.chain.from_iterable(parts))) == runs(segs)


# -- classify -------------------------------------------------------------------------------------


# -- equal parts (Cloudflare R2) -----------------------------------------------------------------
def literals_joined(content: list[Run]) -> list[Run]:
    """:func:`runs` with adjacent literal bytes joined: equal parts may cut a literal in two."""
    out: list[Run] = []
    for run in content:
        if isinstance(run[0], bytes) and out and isinstance(out[-1][0], bytes):
            joined = out[-1][0] + run[0]
            out[-1] = (joined, 0, len(joined))
        else:
            out.append(run)
    return out


@FAST
@example(segments=[CopyRange("a", 0, MiB - 1), b"\x00\x00"], size=1)  # a literal cut in two
@given(segments=BIG_SEGMENTS, size=st.integers(1, 5000))
def test_plan_equal_parts_cuts_exact_sizes_and_keeps_ranges_server_side(
    segments: list[Segment], size: int
) -> None:
    parts = plan_equal_parts(segments, part_size=size * MiB)
    size *= MiB
    assert all(part and all(seg_len(s) > 0 for s in part) for part in parts)
    assert all(part_len(part) == size for part in parts[:-1])
    assert not parts or 0 < part_len(parts[-1]) <= size
    joined = runs(list(itertools.chain.from_iterable(parts)))
    assert literals_joined(joined) == literals_joined(runs(segments))
    # only a part that spans a boundary between sources passes through the client
    for part in parts:
        if len(part) > 1:
            assert len(part) <= len(segments)


@FAST
@given(segments=SMALL_SEGMENTS)
def test_plan_equal_parts_reproduces_bytes(segments: list[Segment]) -> None:
    parts = plan_equal_parts(segments, part_size=64)
    assert materialise([s for part in parts for s in part]) == materialise(segments)


def test_plan_equal_parts_of_a_final_file() -> None:
    """PAR1 + three bodies (20, 7 and 3 MiB) + footer, in parts of 8 MiB: the one part inside a
    body is copied server-side; parts across a boundary pass through the client."""
    bodies = [CopyRange(k, 4, 4 + n * MiB) for k, n in (("p1", 20), ("p2", 7), ("p3", 3))]
    parts = plan_equal_parts([b"PAR1", *bodies, b"f" * 1000])
    assert [part_len(p) for p in parts] == [8 * MiB, 8 * MiB, 8 * MiB, 6 * MiB + 1004]
    assert parts[1] == [CopyRange("p1", 8 * MiB, 16 * MiB)] and is_copy_part(parts[1], 5 * MiB)
    assert parts[2] == [CopyRange("p1", 16 * MiB, 4 + 20 * MiB), CopyRange("p2", 4, 4 + 4 * MiB - 4)]
    # more than 10,000 parts of 8 MiB: the part size grows (in whole MiB) instead
    assert plan_equal_parts([CopyRange("big", 0, 200_000 * MiB)])[0] == [CopyRange("big", 0, 20 * MiB)]


def test_equal_parts_are_needed_on_r2_only() -> None:
    assert needs_equal_parts("https://0123abcd.r2.cloudflarestorage.com")
    assert needs_equal_parts("https://0123abcd.eu.r2.cloudflarestorage.com/")
    assert not needs_equal_parts("https://s3.eu-west-1.amazonaws.com")
    assert not needs_equal_parts("http://127.0.0.1:18333")
    assert not needs_equal_parts(None)


def client_error(code: str, status: int, op: str = "PutObject", message: str | None = None) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message or code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


def wrapped(inner: BaseException, outer: type[BaseException] = OSError) -> BaseException:
    """What s3fs does: translate the botocore error and chain it as the cause."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer(str(exc)) from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("PreconditionFailed", 412), "precondition"),
        (client_error("", 412), "precondition"),
        (client_error("PreconditionFailed", 0), "precondition"),
        (FileExistsError("exists"), "precondition"),
        (client_error("NoSuchKey", 404, "GetObject"), "missing"),
        (client_error("404", 404, "HeadObject"), "missing"),
        (client_error("NoSuchUpload", 404), "missing"),
        (FileNotFoundError("gone"), "missing"),
        (client_error("NoSuchBucket", 404), "fatal"),
        (client_error("AccessDenied", 403), "fatal"),
        (client_error("InvalidAccessKeyId", 403), "fatal"),
        (client_error("SignatureDoesNotMatch", 403), "fatal"),
        (client_error("", 401), "fatal"),
        (client_error("RequestTimeTooSkewed", 403), "fatal"),  # retries are refused alike
        (client_error("ExpiredToken", 400), "fatal"),
        (client_error("TokenRefreshRequired", 400), "fatal"),
        (client_error("InvalidToken", 400), "fatal"),
        (PermissionError("denied"), "fatal"),
        (NoCredentialsError(), "fatal"),  # no request reached S3: the same chain finds none again
        (CredentialRetrievalError(provider="process", error_msg="exit 1"), "fatal"),
        (client_error("SlowDown", 503), "transient"),
        (client_error("ServiceUnavailable", 503), "transient"),
        (client_error("InternalError", 500), "transient"),
        (client_error("", 500), "transient"),
        (client_error("Whatever", 502), "transient"),
        (client_error("TooManyRequests", 429), "transient"),
        (client_error("ConditionalRequestConflict", 409), "transient"),
        (client_error("RequestTimeout", 400), "transient"),
        (client_error("IncompleteBody", 400), "transient"),
        (ConnectionError("reset"), "transient"),
        (ConnectionResetError("reset"), "transient"),
        (TimeoutError("slow"), "transient"),
        (EndpointConnectionError(endpoint_url="http://localhost:1"), "transient"),
        (ReadTimeoutError(endpoint_url="http://localhost:1"), "transient"),
        (OSError("io"), "transient"),
        (ValueError("bug"), "other"),
        (client_error("InvalidRange", 416), "other"),
        (client_error("NotImplemented", 501), "fatal"),  # never retried: the answer stays the same
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_refusal_names_answers_that_will_not_change() -> None:
    """A 4xx the protocol does not handle itself, or a 501: a restart gets the same answer, so the
    runner says so (exit 4) instead of "unexpected error, restart me"."""
    said = "Unsupported header 'x-amz-sdk-checksum-algorithm'"
    unsupported = client_error("InvalidArgument", 400, message=said)
    assert refusal(wrapped(unsupported)) == f"InvalidArgument: {said}"
    assert refusal(client_error("MissingContentMD5", 400)) == "MissingContentMD5: MissingContentMD5"
    assert refusal(client_error("NotImplemented", 501)) == "NotImplemented: NotImplemented"
    for handled in (
        client_error("PreconditionFailed", 412),
        client_error("NoSuchKey", 404),
        client_error("RequestTimeout", 400),
        client_error("IncompleteBody", 400),
        client_error("TooManyRequests", 429),
        client_error("ConditionalRequestConflict", 409),
        client_error("SlowDown", 503),
        ConnectionError("reset"),
        ValueError("bug"),
    ):
        assert refusal(handled) is None, handled


@pytest.mark.parametrize(
    ("inner", "outer", "kind"),
    [
        (client_error("PreconditionFailed", 412), OSError, "precondition"),
        (client_error("NoSuchKey", 404), FileNotFoundError, "missing"),
        (client_error("NoSuchBucket", 404), FileNotFoundError, "fatal"),
        (client_error("AccessDenied", 403), PermissionError, "fatal"),
        (client_error("SlowDown", 503), OSError, "transient"),
        (client_error("InternalError", 500), OSError, "transient"),
    ],
)
def test_classify_follows_the_cause_chain(
    inner: BaseException, outer: type[BaseException], kind: str
) -> None:
    exc = wrapped(inner, outer)
    assert exc.__cause__ is inner
    assert classify(exc) == kind


# -- RetryPolicy ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(base=st.floats(0.0, 5.0), cap=st.floats(0.0, 60.0))
def test_retry_delays_within_cap(base: float, cap: float) -> None:
    policy = RetryPolicy(base=base, cap=cap)
    delays = list(itertools.islice(policy.delays(), 200))
    assert all(0.0 <= d <= cap for d in delays)
    # exponential growth: the bound for attempt i is min(cap, base * 2**i)
    assert all(d <= min(cap, base * 2**i) + 1e-12 for i, d in enumerate(delays))


def test_retry_delays_default_policy() -> None:
    delays = list(itertools.islice(RetryPolicy().delays(), 100))
    assert all(0.0 <= d <= 10.0 for d in delays)
    assert max(delays[20:]) > 0.0


def test_retry_delays_never_overflow() -> None:
    """BUG (storage.py, RetryPolicy.delays): ``self.base * (2**attempt)`` turns a huge int into a
    float; from attempt ~1024 on it raises ``OverflowError: int too large to convert to float``.
    Reached when cap is small relative to max_elapsed (e.g. RetryPolicy(cap=0.01), which
    _retrying would otherwise keep using for 300 s). Expected: cap the exponent (e.g.
    ``min(cap, base * 2 ** min(attempt, 60))``). Failing input: 2000 delays of RetryPolicy(cap=0.01).
    """
    delays = list(itertools.islice(RetryPolicy(cap=0.01).delays(), 2000))
    assert all(0.0 <= d <= 0.01 for d in delays)


def test_a_plain_http_endpoint_builds_no_tls_context_and_https_still_verifies() -> None:
    """No connection is made here: the client's settings only."""
    from consumer.storage import S3Store

    plain = S3Store("b", endpoint_url="http://127.0.0.1:9000")
    assert plain._fs.client_kwargs["verify"] is False  # nothing to verify on plain HTTP
    for endpoint in ("https://s3.example.com", None):
        assert "verify" not in S3Store("b", endpoint_url=endpoint)._fs.client_kwargs


def test_connect_builds_the_client_at_start_without_a_request() -> None:
    """A run builds the S3 client during start-up (before its heap is frozen); nothing is sent,
    so it works with no server listening, and the first operation uses that client."""
    from consumer.storage import S3Store

    store = S3Store("b", endpoint_url="http://127.0.0.1:9")  # the discard port: nothing listens
    store.connect()
    client = store._fs._s3
    assert client is not None and sum(store.stats.requests.values()) == 0
    store.connect()  # idempotent: the same client
    assert store._fs._s3 is client


# -- lifecycle rules that expire what a versioned bucket keeps ---------------------------------
def _rule(**kw: Any) -> dict[str, Any]:
    return {"ID": "r", "Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 1}, **kw}


@pytest.mark.parametrize(
    ("rule", "covers"),
    [
        (_rule(Filter={"Prefix": "out/_staging/"}), True),  # the folder itself
        (_rule(Filter={"Prefix": "out/"}), True),  # the whole output
        (_rule(Filter={}), True),  # the whole bucket
        (_rule(Prefix="out/_st"), True),  # the old top-level Prefix
        (_rule(Filter={"And": {"Prefix": "out/_staging/t/", "Tags": [{"Key": "k", "Value": "v"}]}}), True),
        (_rule(Filter={"Prefix": "other/"}), False),
        (_rule(Filter={"Prefix": "out/_staging/"}, Status="Disabled"), False),
        ({"ID": "r", "Status": "Enabled", "Expiration": {"Days": 30}, "Filter": {"Prefix": ""}}, False),
    ],
)
def test_a_lifecycle_rule_covers_the_staging_folder_when_it_expires_noncurrent_versions_there(
    rule: dict[str, Any], covers: bool
) -> None:
    assert expires_noncurrent_under(rule, "out/_staging/") is covers


def _expiring(**kw: Any) -> dict[str, Any]:
    return {"ID": "keep", "Status": "Enabled", **kw}


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        (_expiring(Expiration={"Days": 30}, Filter={"Prefix": "out/"}), "rule 'keep' after 30 days"),
        (_expiring(Expiration={"Days": 7}, Filter={}), "rule 'keep' after 7 days"),  # the whole bucket
        (_expiring(Expiration={"Date": "2027-01-01T00:00:00Z"}, Prefix="out/_staging/"),
         "rule 'keep' on 2027-01-01T00:00:00Z"),
        # Keeping N days of output as the README says: the final files and dead letters only.
        (_expiring(Expiration={"Days": 30}, Filter={"Prefix": "out/topic="}), None),
        (_expiring(Expiration={"Days": 30}, Filter={"Prefix": "out/_dead_letters/"}), None),
        (_expiring(Expiration={"Days": 30}, Filter={"Prefix": "out/"}, Status="Disabled"), None),
        (_expiring(Expiration={"ExpiredObjectDeleteMarker": True}, Filter={"Prefix": "out/"}), None),
        (_rule(Filter={"Prefix": "out/"}), None),  # noncurrent versions only
    ],
)
def test_a_lifecycle_rule_expiring_current_objects_of_the_staging_folder_is_named(
    rule: dict[str, Any], said: str | None
) -> None:
    assert expires_current_under(rule, "out/_staging/") == said


# -- DeleteObjects: keys it lists as not deleted ---------------------------------------------
class _DeleteAnswers:
    """Stands in for s3fs's ``call_s3`` on DeleteObjects only: each call takes the next of
    ``answers`` (the per-key errors S3 lists in a 200 answer) and records the keys it was asked."""

    def __init__(self, answers: list[list[dict[str, str]]]) -> None:
        self.answers, self.asked = answers, []

    def call_s3(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert op == "delete_objects"
        self.asked.append([o["Key"] for o in kwargs["Delete"]["Objects"]])
        return {"Errors": self.answers.pop(0)} if self.answers else {}


def _store_answering(answers: list[list[dict[str, str]]]) -> tuple[Any, _DeleteAnswers]:
    from consumer.storage import RetryPolicy, S3Store

    store = S3Store("b", endpoint_url="http://127.0.0.1:9",
                    retry=RetryPolicy(base=0.001, cap=0.001, max_elapsed=5))
    fake = _DeleteAnswers(answers)
    store._fs = fake  # type: ignore[assignment]
    return store, fake


def test_keys_a_delete_lists_with_a_transient_error_are_asked_again_alone() -> None:
    """S3 deletes what it can and lists the rest (SlowDown, InternalError): those keys alone are
    sent again, as a failed request would be; a key already gone (NoSuchKey) is not an error."""
    store, fake = _store_answering([
        [{"Key": "b", "Code": "SlowDown", "Message": "Please reduce your request rate."},
         {"Key": "c", "Code": "NoSuchKey"}],
    ])
    store.delete(["a", "b", "c"])
    assert fake.asked == [["a", "b", "c"], ["b"]]
    assert store.stats.requests["delete_objects"] == 2


def test_a_key_a_delete_is_denied_stops_with_the_permission_it_needs() -> None:
    """A bucket policy that allows writing but not deleting: S3 answers 200 and lists every key as
    AccessDenied. That is not retried (it would be denied again) and names s3:DeleteObject."""
    from consumer.storage import FatalStorageError

    denied = {"Key": "a", "Code": "AccessDenied", "Message": "Access Denied"}
    store, fake = _store_answering([[denied]])
    said = (r"S3 delete_objects on s3://b failed: AccessDenied \(Access Denied; 1 key\(s\) not deleted, "
            r"the first a\): access denied: the credentials need s3:DeleteObject")
    with pytest.raises(FatalStorageError, match=said):
        store.delete(["a"])
    assert fake.asked == [["a"]]
