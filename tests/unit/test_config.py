"""Unit tests for consumer.config: precedence, parsing helpers, validation, redaction.

Pure logic: no Kafka, no S3. Config files are written to pytest's tmp_path; the environment is
always passed explicitly (never os.environ) so the tests do not depend on the shell.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.config import (
    COMPRESSIONS,
    Config,
    ConfigError,
    admin_config,
    env_name,
    load,
    parse_bool,
    parse_duration,
    parse_list,
    parse_properties,
    parse_size,
    split_output,
)

FAST = settings(max_examples=200, deadline=None)

VALID = Config(
    bootstrap_servers="localhost:9092",
    group_id="g",
    topics=("page_views",),
    output="s3://bucket/prefix",
    schema="page_view",
)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "consumer.toml"
    path.write_text(text)
    return path


# -- precedence: defaults ← TOML file ← environment ← flags ------------------------------------


def test_defaults_when_nothing_is_given() -> None:
    cfg = load({}, {})
    assert cfg == Config()
    assert cfg.compression == "zstd"
    assert cfg.kafka_properties == {}


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'group_id = "from-file"\n'
        'compression = "snappy"\n'
        'row_group_bytes = "8MiB"\n'
        'batch_size = 10\n'
        'topics = ["a", "b"]\n',
    )
    # file only
    cfg = load({}, {}, path)
    assert (cfg.group_id, cfg.compression, cfg.row_group_bytes, cfg.batch_size) == (
        "from-file", "snappy", 8 * 1024 * 1024, 10,
    )
    assert cfg.topics == ("a", "b")
    # env beats file
    env = {"CONSUMER_GROUP_ID": "from-env", "CONSUMER_COMPRESSION": "gzip"}
    cfg = load({}, env, path)
    assert (cfg.group_id, cfg.compression, cfg.batch_size) == ("from-env", "gzip", 10)
    # flags beat env; a None flag means "not given"
    cfg = load({"group_id": "from-flag", "compression": None}, env, path)
    assert (cfg.group_id, cfg.compression, cfg.batch_size) == ("from-flag", "gzip", 10)


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'group_id = "g-file"\n')
    assert load({}, {"CONSUMER_CONFIG": str(path)}).group_id == "g-file"


def test_dashed_keys_in_config_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'row-group-rows = 123\non-error = "fail"\n')
    cfg = load({}, {}, path)
    assert cfg.row_group_rows == 123
    assert cfg.on_error == "fail"


@pytest.mark.parametrize(
    ("var", "field", "value"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "k1:9092,k2:9092"),
        ("S3_ENDPOINT_URL", "s3_endpoint_url", "http://localhost:8333"),
        ("SCHEMA_REGISTRY_URL", "schema_registry_url", "http://localhost:8081"),
        ("AWS_REGION", "s3_region", "eu-west-3"),
    ],
)
def test_env_aliases(var: str, field: str, value: str) -> None:
    assert getattr(load({}, {var: value}), field) == value


def test_consumer_prefixed_env_beats_alias() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "alias:9092", "CONSUMER_BOOTSTRAP_SERVERS": "own:9092"}
    assert load({}, env).bootstrap_servers == "own:9092"


def test_alias_beats_file_and_flag_beats_alias(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'bootstrap_servers = "file:9092"\n')
    env = {"KAFKA_BOOTSTRAP_SERVERS": "env:9092"}
    assert load({}, env, path).bootstrap_servers == "env:9092"
    assert load({"bootstrap_servers": "flag:9092"}, env, path).bootstrap_servers == "flag:9092"


def test_empty_env_value_is_not_given(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'group_id = "file"\n')
    assert load({}, {"CONSUMER_GROUP_ID": ""}, path).group_id == "file"


def test_env_values_are_parsed() -> None:
    env = {
        env_name("topics"): " a , b,,c ",
        env_name("row_group_bytes"): "16MiB",
        env_name("row_group_max_age"): "500ms",
        env_name("until_caught_up"): "yes",
        env_name("kafka_properties"): "fetch.min.bytes=1,client.id=x",
        env_name("file_rows"): "none",
    }
    cfg = load({}, env)
    assert cfg.topics == ("a", "b", "c")
    assert cfg.row_group_bytes == 16 * 1024 * 1024
    assert cfg.row_group_max_age == pytest.approx(0.5)
    assert cfg.until_caught_up is True
    assert cfg.kafka_properties == {"fetch.min.bytes": "1", "client.id": "x"}
    assert cfg.file_rows is None


def test_optional_setting_can_be_disabled() -> None:
    assert Config().file_max_age is not None
    assert load({}, {"CONSUMER_FILE_MAX_AGE": "none"}).file_max_age is None


def test_kafka_table_and_flag_properties_merge(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[kafka]\n"client.id" = "file"\n"fetch.min.bytes" = 1\n')
    cfg = load({"kafka_properties": ["client.id=flag", "session.timeout.ms=6000"]}, {}, path)
    assert cfg.kafka_properties == {
        "client.id": "flag", "fetch.min.bytes": "1", "session.timeout.ms": "6000",
    }


def test_unknown_keys_in_config_file_are_reported(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'group_id = "g"\nbootstrap = "x"\ncompresion = "zstd"\n')
    with pytest.raises(ConfigError) as info:
        load({}, {}, path)
    text = "\n".join(info.value.problems)
    assert "'bootstrap'" in text
    assert "'compresion'" in text
    assert len(info.value.problems) == 2


def test_every_unparsable_value_is_reported(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'row_group_bytes = "lots"\n')
    env = {"CONSUMER_ROW_GROUP_MAX_AGE": "soon", "CONSUMER_UNTIL_CAUGHT_UP": "maybe"}
    with pytest.raises(ConfigError) as info:
        load({"batch_size": "many"}, env, path)
    problems = info.value.problems
    assert len(problems) == 4, problems
    for needle in ("row_group_bytes", "CONSUMER_ROW_GROUP_MAX_AGE", "CONSUMER_UNTIL_CAUGHT_UP",
                   "--batch-size"):
        assert any(needle in p for p in problems), (needle, problems)


def test_broken_config_file_is_one_clear_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, "group_id = \n")
    with pytest.raises(ConfigError) as info:
        load({}, {}, path)
    assert str(path) in info.value.problems[0]
    with pytest.raises(ConfigError):
        load({}, {}, tmp_path / "absent.toml")


def test_dotted_keys_in_kafka_table_become_properties(tmp_path: Path) -> None:
    """BUG (config.py, load): unquoted librdkafka keys in the ``[kafka]`` table.

    In TOML ``security.protocol = "SASL_SSL"`` is a *dotted key*: tomllib returns
    ``{"security": {"protocol": "SASL_SSL"}}``. load() stringifies the nested dict and yields
    ``{"security": "{'protocol': 'SASL_SSL'}"}`` — a silently wrong property, and for
    ``sasl.password = "…"`` the secret is then logged unmasked by redacted() (key ``sasl``).
    Expected: nested tables flattened to dotted names (or a reported problem).
    """
    path = _toml(tmp_path, '[kafka]\nsecurity.protocol = "SASL_SSL"\nsasl.password = "hunter2"\n')
    try:
        cfg = load({}, {}, path)
    except ConfigError:
        return  # reporting it as a problem is an acceptable fix too
    assert cfg.kafka_properties == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    assert "hunter2" not in repr(cfg.redacted())


# -- parse_size / parse_duration -----------------------------------------------------------------

SIZE_UNITS = {
    "": 1, "b": 1, "B": 1, "k": 1000, "KB": 1000, "kb": 1000, "M": 1000**2, "MB": 1000**2,
    "G": 1000**3, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "Ki": 1024,
    "Mi": 1024**2, "gi": 1024**3,
}
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "MS": 0.001}


@FAST
@given(n=st.integers(0, 10**6), unit=st.sampled_from(sorted(SIZE_UNITS)), space=st.sampled_from(["", " "]))
def test_parse_size_round_trip(n: int, unit: str, space: str) -> None:
    assert parse_size(f"{n}{space}{unit}") == n * SIZE_UNITS[unit]
    assert parse_size(f" {n}{unit} ") == n * SIZE_UNITS[unit]


@FAST
@given(n=st.integers(0, 2**53))  # beyond 2**53 the float in parse_size loses bytes (see below)
def test_parse_size_int_passthrough(n: int) -> None:
    assert parse_size(n) == n
    assert parse_size(str(n)) == n


@pytest.mark.parametrize(("text", "expected"), [
    ("16MiB", 16 * 1024 * 1024), ("8MB", 8_000_000), ("1.5KiB", 1536), ("0.5GiB", 2**29),
    ("2.3MB", 2_300_000),
])
def test_parse_size_examples(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "12 parsecs", "-5MB", "1e6", "5 MiB extra", "1,5MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@FAST
@given(
    whole=st.integers(0, 10**6),
    frac=st.integers(0, 999),
    unit=st.sampled_from(["KB", "MB", "GB"]),
)
def test_parse_size_decimal_with_decimal_unit(whole: int, frac: int, unit: str) -> None:
    """A decimal amount of a decimal unit with ≤ 3 decimals is a whole number of bytes.

    BUG (config.py, parse_size): the value is computed as ``int(float(x) * unit)``, which
    truncates float error: ``parse_size("1.005kb") == 1004`` instead of 1005.
    Expected: exact arithmetic (Decimal/Fraction) or rounding.
    """
    text = f"{whole}.{frac:03d}{unit}"
    exact = Decimal(f"{whole}.{frac:03d}") * SIZE_UNITS[unit]
    assert parse_size(text) == int(exact), text


@FAST
@given(
    n=st.integers(0, 10**6),
    unit=st.sampled_from(sorted(DURATION_UNITS)),
    space=st.sampled_from(["", " "]),
)
def test_parse_duration_round_trip(n: int, unit: str, space: str) -> None:
    assert parse_duration(f"{n}{space}{unit}") == pytest.approx(n * DURATION_UNITS[unit])


@FAST
@given(x=st.floats(0, 1e9, allow_nan=False) | st.integers(0, 10**9))
def test_parse_duration_number_passthrough(x: float) -> None:
    assert parse_duration(x) == float(x)


@pytest.mark.parametrize(("text", "expected"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5h", 5400.0), ("2", 2.0),
])
def test_parse_duration_examples(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "5 days", "-1s", "1d", "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# -- parse_list / parse_bool / parse_properties --------------------------------------------------

ITEM = st.text(st.characters(codec="ascii", exclude_characters=",", categories=["L", "N", "P"]),
               min_size=1, max_size=12)


@FAST
@given(items=st.lists(ITEM, max_size=8), pad=st.sampled_from(["", " ", "  "]))
def test_parse_list_round_trip(items: list[str], pad: str) -> None:
    expected = tuple(i.strip() for i in items if i.strip())
    assert parse_list((pad + "," + pad).join(items)) == expected
    assert parse_list(items) == expected
    assert parse_list(tuple(items)) == expected


def test_parse_list_drops_empty_items() -> None:
    assert parse_list("") == ()
    assert parse_list(" , ,a,, b ,") == ("a", "b")
    assert parse_list(["", " x "]) == ("x",)


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", True])
def test_parse_bool_true(text: str | bool) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "NO", "off", "", False])
def test_parse_bool_false(text: str | bool) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["2", "maybe", "yess", "t"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_bool(text)


PROP_KEY = st.from_regex(r"[a-z][a-z0-9.]{0,20}", fullmatch=True)
PROP_VALUE = st.text(
    st.characters(codec="ascii", categories=["L", "N", "P", "S"], exclude_characters=","), max_size=20
)


@FAST
@given(props=st.dictionaries(PROP_KEY, PROP_VALUE, max_size=6))
def test_parse_properties_round_trip(props: dict[str, str]) -> None:
    items = [f"{k}={v}" for k, v in props.items()]
    assert parse_properties(items) == props
    assert parse_properties(",".join(items)) == props


def test_parse_properties_value_may_contain_equals() -> None:
    got = parse_properties(["sasl.jaas.config=a b password=x", " client.id = c "])
    assert got == {"sasl.jaas.config": "a b password=x", "client.id": "c"}


@pytest.mark.parametrize("items", [["novalue"], "a=1,broken", ["a=1", "b"]])
def test_parse_properties_rejects_items_without_equals(items: list[str] | str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_properties(items)


# -- problems() ----------------------------------------------------------------------------------


def test_valid_config_has_no_problems() -> None:
    assert VALID.problems() == []
    assert VALID.validated() is VALID


def test_problems_lists_every_problem_one_line_each() -> None:
    cfg = Config(
        bootstrap_servers="",
        group_id="g",
        topics=("t",),
        output="file:///tmp/out",
        schema="page_view",
        compression="lzo",
    )
    problems = cfg.problems()
    assert len(problems) == 3, problems
    assert any("bootstrap" in p for p in problems)
    assert any("file:///tmp/out" in p for p in problems)
    assert any("'lzo'" in p for p in problems)
    assert all("\n" not in p and p.strip() for p in problems)
    with pytest.raises(ConfigError) as info:
        cfg.validated()
    assert info.value.problems == problems


def test_problems_many_at_once() -> None:
    cfg = Config(
        topics=("ok", "bad topic!"),
        framing="protobuf",
        kafka_columns=("offset", "lag"),
        on_error="ignore",
        row_group_rows=0,
        batch_size=-1,
        file_rows=0,
        row_group_max_age=0,
        file_max_age=-1,
        memory_bytes=1,
        row_group_bytes=2,
        log_format="xml",
        kafka_properties={"enable.auto.commit": "true", "enable.auto.offset.store": "true"},
    )
    problems = cfg.problems()
    text = "\n".join(problems)
    for needle in (
        "bootstrap servers missing", "group id missing", "'bad topic!'", "output missing",
        "framing 'protobuf'", "kafka column 'lag'", "on-error 'ignore'", "row-group-rows",
        "batch-size", "file-rows", "row-group-max-age", "file-max-age", "memory-bytes (1)",
        "log-format", "-X enable.auto.commit", "-X enable.auto.offset.store",
    ):
        assert needle in text, needle
    assert all("\n" not in p for p in problems)
    assert "group id" not in "\n".join(cfg.problems(need_group=False))


def test_framing_needs_schema_or_registry() -> None:
    raw = Config(bootstrap_servers="b", group_id="g", topics=("t",), output="s3://bucket")
    assert any("writer schema" in p for p in raw.problems())
    conf = Config(bootstrap_servers="b", group_id="g", topics=("t",), output="s3://bucket",
                  framing="confluent")
    assert any("schema-registry-url" in p for p in conf.problems())
    ok = Config(bootstrap_servers="b", group_id="g", topics=("t",), output="s3://bucket",
                framing="confluent", schema_registry_url="http://r:8081")
    assert ok.problems() == []


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_known_compressions_accepted(compression: str) -> None:
    from dataclasses import replace

    assert replace(VALID, compression=compression).problems() == []


def test_auto_commit_refused_whatever_the_value() -> None:
    from dataclasses import replace

    for value in ("true", "false"):
        cfg = replace(VALID, kafka_properties={"enable.auto.commit": value})
        problems = cfg.problems()
        assert len(problems) == 1
        assert "enable.auto.commit" in problems[0]


def test_auto_commit_flag_refused_through_load() -> None:
    cfg = load(
        {"kafka_properties": ["enable.auto.commit=true"], "bootstrap_servers": "b", "group_id": "g",
         "topics": "t", "output": "s3://bucket/p", "schema": "page_view"},
        {},
    )
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        cfg.validated()


@pytest.mark.parametrize(("key", "flag", "field"), [("group.id", "--group-id", "group_id"),
                                                    ("bootstrap.servers", "--bootstrap-servers",
                                                     "bootstrap_servers")])
def test_a_kafka_property_that_disagrees_with_its_flag_is_refused(key: str, flag: str, field: str) -> None:
    """librdkafka would take the -X value while the consumer goes by the flag: with -X group.id
    the group that commits would not be the group the protocol checks and fences. Given alike (a
    properties file translated to -X beside the flags) they are fine."""
    from dataclasses import replace

    given = getattr(VALID, field)
    [problem] = replace(VALID, kafka_properties={key: "other:1"}).problems()
    assert problem.startswith(f"-X {key}=other:1 disagrees with {flag} {given}: ")
    assert problem.endswith(f"give it once, with {flag}, and drop -X {key}")
    assert replace(VALID, kafka_properties={key: given}).problems() == []


def test_a_static_id_is_refused_where_processes_set_one_per_member() -> None:
    from dataclasses import replace

    one = replace(VALID, kafka_properties={"group.instance.id": "me"})
    assert one.problems() == []
    [problem] = replace(one, processes=2).problems()
    assert problem.startswith("-X group.instance.id is set for each member by --processes 2")


def test_topic_name_with_trailing_newline_is_a_problem() -> None:
    """BUG (config.py, Config.problems): topic check uses ``re.match(r"^…$")``.

    ``$`` also matches before a trailing newline, so ``"t\\n"`` passes as a valid topic name.
    Expected: ``re.fullmatch`` (or ``\\Z``). Same pattern issue in layout.check_topic_name.
    """
    from dataclasses import replace

    assert replace(VALID, topics=("t\n",)).problems() != []


# -- redacted() ----------------------------------------------------------------------------------

SECRET_KEYS = [
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.jaas.config",
    "sasl.oauthbearer.client.secret", "ssl.key.pem", "SASL.PASSWORD",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_redacted_masks_secret_properties(key: str) -> None:
    from dataclasses import replace

    secret = "s3cr3t-VALUE-42"
    cfg = replace(VALID, kafka_properties={key: secret, "client.id": "visible"})
    red = cfg.redacted()
    assert red["kafka_properties"][key] == "***"
    assert red["kafka_properties"]["client.id"] == "visible"
    assert secret not in repr(red)
    assert cfg.kafka_properties[key] == secret  # the config itself is untouched


def test_redacted_masks_oauthbearer_assertion_passphrase() -> None:
    """BUG (config.py, _SECRET_HINTS): librdkafka ≥ 2.6 has
    ``sasl.oauthbearer.assertion.private.key.passphrase`` (a secret); none of the hints
    ('password', 'secret', 'token', 'key.pem', 'jaas', 'credentials') matches it, so
    redacted() logs it in clear. Expected: add 'passphrase' (and arguably 'private.key').
    """
    from dataclasses import replace

    cfg = replace(VALID, kafka_properties={"sasl.oauthbearer.assertion.private.key.passphrase": "pw1"})
    assert "pw1" not in repr(cfg.redacted())


def test_redacted_hides_registry_url_credentials() -> None:
    """BUG (config.py, redacted): SCHEMA_REGISTRY_URL may carry ``user:password@`` (the registry
    client documents and supports it), and runner.py logs ``config.redacted()`` at start, so the
    registry password lands in the logs. Expected: userinfo masked in URL-valued settings.
    """
    from dataclasses import replace

    cfg = replace(VALID, framing="confluent",
                  schema_registry_url="https://svc-user:reg-pa55@registry.example:8081")
    assert "reg-pa55" not in repr(cfg.redacted())


@FAST
@given(secret=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=8, max_size=30),
       key=st.sampled_from(SECRET_KEYS))
def test_redacted_never_contains_the_secret(secret: str, key: str) -> None:
    from dataclasses import replace

    secret = "#S#" + secret  # a marker no setting name or default contains
    cfg = replace(VALID, kafka_properties={key: secret})
    assert secret not in repr(cfg.redacted())


def test_redacted_has_every_field() -> None:
    red = VALID.redacted()
    from dataclasses import fields

    assert set(red) == {f.name for f in fields(Config)}


# -- split_output ----------------------------------------------------------------------------------

BUCKET = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True)
PREFIX = st.lists(st.from_regex(r"[A-Za-z0-9_=.-]{1,10}", fullmatch=True), max_size=4).map("/".join)


@FAST
@given(bucket=BUCKET, prefix=PREFIX, trailing=st.booleans())
def test_split_output_round_trip(bucket: str, prefix: str, trailing: bool) -> None:
    url = f"s3://{bucket}" + (f"/{prefix}" if prefix else "") + ("/" if trailing else "")
    assert split_output(url) == (bucket, prefix)
    cfg = Config(output=url)
    assert (cfg.bucket, cfg.prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "url", ["bucket/prefix", "s3:/bucket", "s3://", "s3://B/x", "s3://ab", "gs://bucket/x",
            "s3://-bucket/x", "s3://bucket_name/x"],
)
def test_split_output_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        split_output(url)



def test_an_s3_endpoint_botocore_refuses_is_a_config_error_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run builds its S3 client before anything else happens (no request is sent): an
    endpoint URL botocore cannot use is exit 2 with its reason, not an "unexpected error" later."""
    from consumer import cli

    code = cli.main(
        [
            "run",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--group-id",
            "g",
            "--topic",
            "t",
            "--schema",
            "page_view",
            "--output",
            "s3://bucket/prefix",
            "--s3-endpoint-url",
            "http://exa mple:9",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "consumer: config: S3 client: ValueError: Invalid endpoint: http://exa mple:9" in err


@pytest.mark.parametrize("command", ["show", "verify"])
@pytest.mark.parametrize(("flags", "said"), [
    (["--output", "s3://UPPER/x"], "output 's3://UPPER/x' must look like s3://bucket/prefix"),
    (["--output", "s3://bucket/x", "--s3-endpoint-url", "http://exa mple:9"],
     "S3 client: ValueError: Invalid endpoint: http://exa mple:9"),
])
def test_the_readers_of_an_output_say_a_bad_output_or_endpoint_in_one_line(
    command: str, flags: list[str], said: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """``show`` printed a traceback for both (exit 1), and ``verify`` for the endpoint, which
    reads as "the output breaks an invariant" to a job that checks verify's status."""
    from consumer import cli

    topic = ["--topic", "t"] if command == "verify" else []
    assert cli.main([command, *topic, *flags]) == 2
    assert capsys.readouterr().err == f"consumer: {command}: {said}\n"


@pytest.mark.parametrize(
    ("props", "said"),
    [
        (["no.such.property=1"], 'No such configuration property: "no.such.property"'),
        (["group.protocol=consumer", "session.timeout.ms=10000"],
         "`session.timeout.ms` is not supported for `group.protocol=consumer`"),
    ],
)  # fmt: skip
def test_a_kafka_property_librdkafka_refuses_is_a_config_error_at_start(
    props: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with librdkafka's own words (no traceback); the client is built before any request."""
    from consumer import cli

    flags = [w for p in props for w in ("-X", p)]
    code = cli.main(
        ["run", "--bootstrap-servers", "127.0.0.1:1", "--group-id", "g", "--topic", "t",
         "--schema", "page_view", "--output", "s3://bucket/prefix", *flags]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "consumer: config: the Kafka client refused its configuration: " in err
    assert said in err


def test_an_admin_client_gets_the_cluster_settings_but_not_the_consumer_only_properties() -> None:
    """librdkafka warns on stderr about every consumer-only property an AdminClient is given."""
    props = {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "client.id": "c",
        "group.instance.id": "h-0", "session.timeout.ms": "10000", "fetch.queue.backoff.ms": "20",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "enable.auto.commit": "false", "partition.assignment.strategy": "range",
    }  # fmt: skip
    cfg = dataclasses.replace(VALID, bootstrap_servers="k:9092", kafka_properties=props)
    assert admin_config(cfg) == {
        "bootstrap.servers": "k:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
        "client.id": "c",
    }  # fmt: skip


# -- S3 server-side encryption ---------------------------------------------------------------
def test_s3_encryption_is_sent_as_asked_and_a_wrong_setting_is_refused() -> None:
    """``--s3-sse`` and ``--s3-sse-kms-key-id`` (or ``CONSUMER_S3_SSE``…) become the arguments of
    every S3 write; nothing is sent by default (the bucket's own encryption applies)."""
    assert VALID.s3_encryption() == {}
    kms = dataclasses.replace(VALID, s3_sse="aws:kms", s3_sse_kms_key_id="alias/exports")
    assert kms.problems() == []
    assert kms.s3_encryption() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/exports"}
    assert dataclasses.replace(VALID, s3_sse="AES256").s3_encryption() == {"ServerSideEncryption": "AES256"}
    loaded = load({"s3_sse": "aws:kms:dsse"}, env={"CONSUMER_S3_SSE_KMS_KEY_ID": "k1"})
    assert loaded.s3_encryption() == {"ServerSideEncryption": "aws:kms:dsse", "SSEKMSKeyId": "k1"}
    assert dataclasses.replace(VALID, s3_sse="aes256").problems() == [
        "s3-sse 'aes256' unknown: use one of AES256, aws:kms, aws:kms:dsse"]
    (said,) = dataclasses.replace(VALID, s3_sse="AES256", s3_sse_kms_key_id="k").problems()
    assert said.startswith("s3-sse-kms-key-id names a KMS key: pass --s3-sse aws:kms")
