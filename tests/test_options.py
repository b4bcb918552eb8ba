"""The option rules of ``tidings serve`` (tidings/options.py, the table in cli.py) and the
log helpers (tidings/logs.py), without a process: sources in, values or one-line errors out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from tidings.cli import OPTIONS, _build, config_from_options, resolve_options
from tidings.config import Config
from tidings.inbox.base import InboxLimits
from tidings.logs import JsonFormatter, RateLimited
from tidings.options import OptionError, Resolved, load_toml, redact_url, resolve


def options(argv: list[str], environ: dict[str, str] | None = None) -> Resolved:
    parser, _ = _build()
    return resolve_options(parser.parse_args(["serve", *argv]), environ or {})


def config(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    return config_from_options(options(argv, environ))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return str(path)


# -- precedence: flag > environment > file > default ----------------------------------------
def test_defaults_are_the_configs() -> None:
    assert config([]) == Config()


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9001\nmax-headers = 7\nnode-id = 'from-file'\n")
    env = {"TIDINGS_PORT": "9002", "TIDINGS_NODE_ID": "from-env"}
    resolved = options(["--config", path, "--port", "9003"], env)
    assert resolved["port"] == 9003 and resolved.origins["port"] == "--port"
    assert resolved["node-id"] == "from-env" and resolved.origins["node-id"] == "TIDINGS_NODE_ID"
    assert resolved["max-headers"] == 7 and resolved.origins["max-headers"].endswith(
        ": max-headers"
    )
    assert resolved["max-frame-bytes"] == 64 * 1024
    assert resolved.origins["max-frame-bytes"] == "default"


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "send-allow = ['/app/**', '/topic/chat/*']\n")
    assert config([], {"TIDINGS_CONFIG": path}).send_allow == ("/app/**", "/topic/chat/*")


def test_file_keys_may_use_underscores(tmp_path: Path) -> None:
    path = write(tmp_path, "max_outbound_bytes = 4096\nsockjs_cookie_needed = true\n")
    result = config(["--config", path])
    assert result.max_outbound_bytes == 4096 and result.sockjs_cookie_needed is True


def test_both_spellings_of_one_key_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "max_headers = 4\nmax-headers = 5\n")
    with pytest.raises(OptionError, match="'max-headers' and 'max_headers' are the same"):
        options(["--config", path])


def test_lists_a_flag_replaces_and_the_environment_splits_on_commas(tmp_path: Path) -> None:
    path = write(tmp_path, "send-allow = ['/from/file']\n")
    env = {"TIDINGS_SEND_ALLOW": "/a/**, /b/*"}
    assert config(["--config", path], env).send_allow == ("/a/**", "/b/*")
    flags = ["--config", path, "--send-allow", "/x", "--send-allow", "/y"]
    assert config(flags, env).send_allow == ("/x", "/y")


def test_jwt_hardening_options_reach_the_config() -> None:
    env = {"TIDINGS_JWT_SECRET": "x" * 40, "TIDINGS_JWT_AUDIENCE": "tidings"}
    flags = ["--auth", "jwt", "--jwt-issuer", "https://idp", "--jwt-allow-no-exp"]
    result = config([*flags, "--allow-query-token"], env)
    assert (result.jwt_audience, result.jwt_issuer) == ("tidings", "https://idp")
    assert result.jwt_allow_no_exp is True and result.allow_query_token is True
    strict = config(["--auth", "jwt"], env)
    assert strict.jwt_allow_no_exp is False and strict.allow_query_token is False


@pytest.mark.parametrize(
    "flag", [["--jwt-audience", "a"], ["--jwt-issuer", "i"], ["--jwt-allow-no-exp"]]
)
def test_jwt_options_without_auth_jwt_are_refused(flag: list[str]) -> None:
    with pytest.raises(OptionError, match="is set but --auth is 'none'"):
        config(flag)


def test_a_switch_can_be_turned_off_by_a_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "access-log = true\n")
    assert config(["--config", path]).access_log is True
    assert config(["--config", path], {"TIDINGS_ACCESS_LOG": "off"}).access_log is False
    assert config(["--config", path, "--no-access-log"]).access_log is False


def test_heartbeat_from_text_or_a_toml_array(tmp_path: Path) -> None:
    assert config(["--heartbeat", "0,5000"]).heartbeat == (0, 5000)
    path = write(tmp_path, "heartbeat = [2000, 3000]\n")
    assert config(["--config", path]).heartbeat == (2000, 3000)


def test_zero_turns_the_catch_up_safety_net_off() -> None:
    assert config(["--catchup-interval", "0"], {}).catchup_interval_s == 0
    assert config([], {}).catchup_interval_s == Config().catchup_interval_s > 0


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert config([], {"TIDINGS_API_KEY": "", "TIDINGS_PORT": ""}) == Config()


# -- errors: one line naming the source, the key and what was expected -----------------------
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("port = '9908'", "tidings.toml: port: expected an integer, got a string ('9908')"),
        ("port = 99999", "tidings.toml: port: must be between 1 and 65535, got 99999"),
        ("head-timeout = 0", "tidings.toml: head-timeout: must be a positive number, got 0.0"),
        ("catchup-interval = -1", "catchup-interval: must be a positive number or 0 (never)"),
        ("access-log = 'yes'", "tidings.toml: access-log: expected true or false, got a string"),
        ("send-allow = [1, 2]", "tidings.toml: send-allow: expected a list of strings"),
        ("max-frame-bytes = true", "max-frame-bytes: expected an integer, got a boolean"),
        ("apikey = 'k'", "tidings.toml: unknown key 'apikey' (did you mean api-key?)"),
        ("[serve]\nport = 1", "tidings.toml: unknown key 'serve'"),
        (
            "broker = 'http://x'",
            "expected a memory://, redis://, rediss://, redis+sentinel://, redis+cluster:// or amqp://",
        ),
        ("broker = 'redis+sentinel://h:1/'", "broker: expected the master's name as the path"),
        ("inbox-replica-timeout = 0", "inbox-replica-timeout: must be between 1 and 10000"),
        ("inbox-idempotency-ttl = 0", "inbox-idempotency-ttl: must be a positive number, got 0"),
        ("log-level = 'loud'", "log-level: expected one of debug, info, warning, error"),
        ("endpoint = ['stomp']", "endpoint: expected a path like /stomp, got 'stomp'"),
        ("sockjs-disable-transport = ['carrier-pigeon']", "expected one of websocket,"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(OptionError) as caught:
        options(["--config", path])
    assert error in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"TIDINGS_APIKEY": "k"}, "unknown environment variable TIDINGS_APIKEY (did you mean"),
        ({"TIDINGS_PORT": "abc"}, "TIDINGS_PORT: expected an integer, got 'abc'"),
        ({"TIDINGS_PORT": "0"}, "TIDINGS_PORT: must be between 1 and 65535, got 0"),
        ({"TIDINGS_GC_LOG": "maybe"}, "TIDINGS_GC_LOG: expected one of 1/true/yes/on"),
        ({"TIDINGS_MAX_OUTBOUND_BYTES": "-1"}, "must be at least 1, got -1"),
    ],
)
def test_environment_errors_name_the_variable(environ: dict[str, str], error: str) -> None:
    with pytest.raises(OptionError) as caught:
        options([], environ)
    assert error in str(caught.value)


def test_variables_the_project_reads_that_are_not_options_pass() -> None:
    env = {"TIDINGS_UPDATE_SCREENSHOT": "1", "TIDINGS_AGENT_DEBUG": "1", "PATH": "/bin"}
    assert options([], env)["port"] == 9908


def test_an_unreadable_or_invalid_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"cannot read config file .*missing.toml"):
        load_toml(str(tmp_path / "missing.toml"))
    with pytest.raises(OptionError, match="not valid TOML"):
        load_toml(write(tmp_path, "port = \n"))


@pytest.mark.parametrize(
    ("argv", "environ", "error"),
    [
        (["--auth", "jwt"], {}, "--auth jwt needs --jwt-secret"),
        (["--auth", "jwt", "--jwt-secret", "short"], {}, "--jwt-secret: HS256 secret must be"),
        ([], {"TIDINGS_JWT_SECRET": "x" * 40}, "TIDINGS_JWT_SECRET is set but --auth is 'none'"),
        (["--workers", "2"], {}, "--workers N needs a shared broker"),
        (
            ["--legacy-channel", "c"],
            {},
            "--legacy-channel needs a Redis broker",
        ),
        (["--inbox-min-replicas", "1"], {}, "--inbox-min-replicas needs a Redis broker"),
        (["--broker", "amqp://h/"], {}, "--broker amqp:// routes .* needs an inbox store"),
        (["--auth", "jwt", "--jwt-public-key", "/nonexistent.pem"], {}, "cannot read"),
    ],
)
def test_options_that_need_one_another(
    argv: list[str], environ: dict[str, str], error: str
) -> None:
    with pytest.raises(OptionError, match=error):
        config(argv, environ)


def test_every_option_has_a_distinct_flag_and_variable() -> None:
    assert len({o.flag for o in OPTIONS}) == len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_resolve_rejects_unknown_variables_whatever_the_table() -> None:
    with pytest.raises(OptionError, match="TIDINGS_X"):
        resolve(OPTIONS, {}, {"TIDINGS_X": "1"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:s3cret@redis:6380/1", "rediss://app:***@redis:6380/1"),
        ("redis://redis/0?password=s3cret&ssl_cert_reqs=none", "redis://redis/0?password=***"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url).startswith(shown)
    assert "s3cret" not in redact_url(url)


# -- logs ------------------------------------------------------------------------------------
def test_rate_limited_writes_one_line_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = RateLimited(logging.getLogger("test.throttle"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        written = [throttled.warning("bad token", "auth failed: %s", i) for i in range(100)]
        assert written == [True] + [False] * 99
        assert throttled.warning("expired", "auth failed: expired")  # another reason
        now[0] += 10.0
        assert throttled.warning("bad token", "auth failed: %s", "late")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "auth failed: 0",
        "auth failed: expired",
        "auth failed: late (99 more like this in the last 10 s not logged)",
    ]
    assert caplog.records[-1].suppressed == 99  # type: ignore[attr-defined]


def test_rate_limited_bounds_the_reasons_it_tracks(caplog: pytest.LogCaptureFixture) -> None:
    throttled = RateLimited(logging.getLogger("test.throttle2"), 10.0, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="test.throttle2"):
        lines = sum(throttled.warning(f"reason {i}", "x") for i in range(1000))
    assert lines == 65  # 64 reasons tracked, then one shared budget for the rest


def test_json_formatter_writes_one_object_per_line_with_extras() -> None:
    record = logging.LogRecord("tidings", logging.INFO, __file__, 1, "node %s up", ("a",), None)
    record.endpoints = ["/stomp"]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry: dict[str, Any] = orjson.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "tidings"
    assert entry["message"] == "node a up" and entry["endpoints"] == ["/stomp"]
    assert entry["time"].startswith("20") and entry["time"].endswith("+00:00")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys  # noqa: PLC0415

        failed = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = orjson.loads(JsonFormatter().format(failed))
    assert "RuntimeError: boom" in entry["exception"]


def test_allowed_origin_and_its_older_name_fill_one_list(tmp_path: Path) -> None:
    assert config([]).allowed_origins == ("*",)
    both = config(
        ["--allowed-origin", "https://a.example", "--sockjs-allowed-origin", "https://b.example"]
    )
    assert both.allowed_origins == ("https://a.example", "https://b.example")
    path = tmp_path / "node.toml"
    path.write_text('sockjs-allowed-origin = ["https://c.example"]\n')
    from_file = config(["--config", str(path)], {"TIDINGS_ALLOWED_ORIGIN": "https://d.example"})
    assert from_file.allowed_origins == ("https://d.example", "https://c.example")


def test_trusted_proxies_default_to_loopback_and_a_list_replaces_it() -> None:
    assert config([]).trusted_proxies == ("127.0.0.0/8", "::1/128")
    given = config(["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"])
    assert given.trusted_proxies == ("10.0.0.0/8", "::1")
    assert config([], {"TIDINGS_TRUSTED_PROXY": "none"}).trusted_proxies == ("none",)
    with pytest.raises(OptionError, match="TIDINGS_TRUSTED_PROXY: expected an address or CIDR"):
        config([], {"TIDINGS_TRUSTED_PROXY": "10.0.0.0/33"})
    with pytest.raises(OptionError, match=r"--api-key: this key can never authenticate"):
        config(["--api-key", "with space"])


def test_sentinel_broker_and_replica_options_reach_the_config() -> None:
    url = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster?sentinel_password=s"
    argv = ["--broker", url, "--inbox-min-replicas", "1", "--inbox-replica-timeout", "250"]
    made = config(argv, {})
    assert made.broker == url
    assert (made.inbox.min_replicas, made.inbox.replica_timeout_s) == (1, 0.25)
    assert config([], {}).inbox.min_replicas == 0


def test_the_idempotency_ttl_reaches_the_inbox_limits_from_every_source(tmp_path: Path) -> None:
    path = write(tmp_path, "inbox-idempotency-ttl = 3600\n")
    assert config([]).inbox.idempotency_ttl_s == 24 * 3600.0
    assert config(["--config", path]).inbox.idempotency_ttl_s == 3600.0
    env = {"TIDINGS_INBOX_IDEMPOTENCY_TTL": "600"}
    assert config(["--config", path], env).inbox.idempotency_ttl_s == 600.0
    assert config(["--inbox-idempotency-ttl", "0.5", "--config", path], env).inbox == InboxLimits(
        idempotency_ttl_s=0.5
    )
