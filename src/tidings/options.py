"""The options of ``tidings serve``: one table, three sources, one precedence.

Every option in ``OPTIONS`` can be given

* as a flag, ``--max-frame-bytes 65536``;
* as an environment variable, ``TIDINGS_MAX_FRAME_BYTES=65536`` (lists comma-separated,
  switches ``1/true/yes/on`` or ``0/false/no/off``; an empty value counts as unset);
* in a TOML file named by ``--config FILE`` (or ``TIDINGS_CONFIG``), keyed by the long
  option name, ``max-frame-bytes = 65536`` (``max_frame_bytes`` is read the same).

A flag beats the environment, which beats the file, which beats the default. Unknown
file keys and unknown ``TIDINGS_*`` variables are errors that name them, as are values of
the wrong type or out of range: each error is one line saying where the value came from
(``--port``, ``TIDINGS_PORT`` or ``tidings.toml: port``) and what was expected.

This module has no I/O of its own but reading the file: the sources come in as
mappings, so the rules are tested without a process (tests/test_options.py).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "TIDINGS_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
BROKER_SCHEMES = (
    *("memory", "redis", "rediss", "redis+sentinel", "rediss+sentinel"),
    *("redis+cluster", "rediss+cluster"),
    *("amqp", "amqps"),
)

# TIDINGS_* variables the project reads that are not options of `tidings serve`.
NOT_OPTIONS: dict[str, str] = {
    CONFIG_ENV: "the --config file",
    "TIDINGS_UPDATE_SCREENSHOT": "tests: rewrite docs/demo.png",
    "TIDINGS_AGENT_DEBUG": "tests: debug output of the Node STOMP test agent",
}


class OptionError(Exception):
    """A value that cannot be used; the message is one line naming where it came from."""


# -- kinds: how a value is read from text (flag, environment) and from TOML ----------------
class Kind:
    """How one option's values are read and checked."""

    expected = "a string"  # the TOML type, for "expected <this>, got ..."
    metavar = "TEXT"
    many = False  # a list: the flag is repeatable
    switch = False  # a flag without a value

    def from_text(self, text: str) -> Any:
        """The value of a flag or environment variable; ValueError says what is wrong."""
        return self.check(text)

    def from_toml(self, value: object) -> Any:
        """The value of a file key; TypeError when the TOML type is wrong."""
        if not isinstance(value, str):
            raise TypeError
        return self.check(value)

    def check(self, value: Any) -> Any:
        return value


class Text(Kind):
    def __init__(self, metavar: str = "TEXT") -> None:
        self.metavar = metavar


@dataclass
class Integer(Kind):
    low: int = 1
    high: int | None = None
    metavar: str = "N"
    expected: str = "an integer"

    def from_text(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        return self.check(value)

    def from_toml(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return self.check(value)

    def check(self, value: int) -> int:
        if self.high is not None and not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}, got {value}")
        if value < self.low:
            raise ValueError(f"must be at least {self.low}, got {value}")
        return value


@dataclass
class Seconds(Kind):
    """A positive number (of seconds, or of intervals); 0 too with ``zero_means``."""

    metavar: str = "SECONDS"
    expected: str = "a number"
    zero_means: str = ""
    """What 0 turns off, for options where it may (e.g. "never"); empty: 0 is refused."""

    def from_text(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        return self.check(value)

    def from_toml(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        return self.check(float(value))

    def check(self, value: float) -> float:
        if value == 0 and self.zero_means:
            return value
        if not value > 0 or value == float("inf"):
            allowed = f" or 0 ({self.zero_means})" if self.zero_means else ""
            raise ValueError(f"must be a positive number{allowed}, got {value}")
        return value


@dataclass
class Choice(Kind):
    choices: tuple[str, ...] = ()
    label: str = ""  # the metavar; "{a,b}" when empty

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return self.label or "{" + ",".join(self.choices) + "}"

    def check(self, value: str) -> str:
        if value.lower() not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value.lower()


class Switch(Kind):
    expected = "true or false"
    switch = True
    _TRUE = ("1", "true", "yes", "on")
    _FALSE = ("0", "false", "no", "off")

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in self._TRUE:
            return True
        if word in self._FALSE:
            return False
        raise ValueError(f"expected one of {'/'.join(self._TRUE + self._FALSE)}, got {text!r}")

    def from_toml(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise TypeError
        return value


@dataclass
class Many(Kind):
    """A list of strings: a repeatable flag, a comma-separated variable, a TOML array."""

    item: Kind = field(default_factory=Text)
    expected: str = "a list of strings"
    many: bool = True

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return self.item.metavar

    def from_text(self, text: str) -> list[Any]:  # one flag occurrence: one item
        return [self.item.check(text)]

    def from_env(self, text: str) -> list[Any]:
        return [self.item.check(part.strip()) for part in text.split(",") if part.strip()]

    def from_toml(self, value: object) -> list[Any]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise TypeError
        return [self.item.check(item) for item in value]


class Pair(Kind):
    """Two non-negative integers, ``10000,10000`` (or ``[10000, 10000]`` in TOML)."""

    metavar = "SEND_MS,EXPECT_MS"
    expected = 'a string like "10000,10000" or a list of two integers'

    def from_text(self, text: str) -> tuple[int, int]:
        try:
            first, second = (int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"expected two integers like 10000,10000, got {text!r}") from None
        return self.check((first, second))

    def from_toml(self, value: object) -> tuple[int, int]:
        if isinstance(value, str):
            return self.from_text(value)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise TypeError
        return self.check((value[0], value[1]))

    def check(self, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] < 0 or value[1] < 0:
            raise ValueError(f"values must not be negative, got {value[0]},{value[1]}")
        return value


class BrokerUrl(Kind):
    metavar = "URL"

    def check(self, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError(
                "expected a memory://, redis://, rediss://, redis+sentinel://, redis+cluster:// "
                f"or amqp:// URL, got {redact_url(value)!r}"
            )
        if scheme.endswith("+sentinel"):
            # Imported here: redis-py loads only when a Redis URL is configured.
            from tidings.redis_sentinel import parse  # noqa: PLC0415

            parse(value)  # ValueError saying what is wrong
        if scheme.endswith("+cluster"):
            from tidings.redis_cluster import parse as parse_cluster  # noqa: PLC0415

            parse_cluster(value)
        if scheme.startswith("amqp"):
            try:  # aiormq, the `amqp` extra, loads only when an AMQP URL is configured
                from tidings.brokers.amqp import split_url  # noqa: PLC0415
            except ImportError:
                raise ValueError(
                    "an amqp:// broker needs the aiormq package: pip install 'tidings[amqp]'"
                ) from None
            split_url(value)  # ValueError saying what is wrong
        return value


INBOX_SCHEMES = ("memory", *BROKER_SCHEMES[1:], "postgresql", "postgres")


class InboxUrl(Kind):
    """``--inbox``: where messages are stored (issue 20)."""

    metavar = "URL"

    def check(self, value: str) -> str:
        if urlsplit(value).scheme not in INBOX_SCHEMES:
            raise ValueError(
                "expected a memory://, redis://, rediss://, redis+sentinel:// or "
                f"postgresql:// URL, got {redact_url(value)!r}"
            )
        return value


class EndpointPath(Kind):
    metavar = "PATH"

    def check(self, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or " " in value:
            raise ValueError(f"expected a path like /stomp, got {value!r}")
        return value


# -- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option of ``tidings serve``: flag ``--<name>``, variable ``TIDINGS_<NAME>``,
    file key ``<name>``."""

    name: str
    kind: Kind
    default: Any
    help: str
    group: str = "general"
    shown_default: str | None = None  # the default as --help shows it, if not ``default``

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


Source = Callable[[Option], Any]


def redact_url(url: str) -> str:
    """``url`` with its passwords (user-info, ``?password=``, ``?sentinel_password=``)
    replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    query = "&".join(
        f"{key}=***" if key.lower() in ("password", "sentinel_password") else part
        for part in parts.query.split("&")
        if part
        for key in (part.split("=", 1)[0],)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing hidden: as given (geturl() would turn memory:// into memory:)
    return parts._replace(netloc=netloc, query=query).geturl()


@dataclass
class Resolved:
    """The value of every option, and where each came from (flag, env, file, default)."""

    values: dict[str, Any]
    origins: dict[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def resolve(
    options: Sequence[Option],
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    file: Mapping[str, Any] | None = None,
    file_name: str = "config file",
) -> Resolved:
    """Every option's value: flag > ``TIDINGS_*`` variable > file > default.

    ``flags`` maps an option's dest to its parsed value, None when not given. ``file`` is
    the parsed TOML document. OptionError for unknown variables or keys, and bad values.
    """
    by_name = {option.name: option for option in options}
    check_environment(options, environ)
    file_values = read_file_values(by_name, file or {}, file_name)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for option in options:
        given = flags.get(option.dest)
        text = environ.get(option.env, "")
        if given is not None:
            values[option.name], origins[option.name] = given, option.flag
        elif text:
            values[option.name], origins[option.name] = _from_env(option, text), option.env
        elif option.name in file_values:
            values[option.name] = file_values[option.name]
            origins[option.name] = f"{file_name}: {option.name}"
        else:
            values[option.name], origins[option.name] = option.default, "default"
    return Resolved(values, origins)


def check_environment(options: Sequence[Option], environ: Mapping[str, str]) -> None:
    """OptionError naming the first ``TIDINGS_*`` variable that is no option (a typo)."""
    known = {option.env for option in options} | set(NOT_OPTIONS)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            raise OptionError(f"unknown environment variable {name}{_did_you_mean(name, known)}")


def _from_env(option: Option, text: str) -> Any:
    kind = option.kind
    try:
        return kind.from_env(text) if isinstance(kind, Many) else kind.from_text(text)
    except ValueError as exc:
        raise OptionError(f"{option.env}: {exc}") from None


def read_file_values(
    by_name: Mapping[str, Option], document: Mapping[str, Any], file_name: str
) -> dict[str, Any]:
    """The options a TOML document sets, by option name; OptionError for anything else."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, raw in document.items():
        name = key.replace("_", "-")
        option = by_name.get(name)
        if option is None:
            hint = _did_you_mean(name, by_name)
            raise OptionError(f"{file_name}: unknown key {key!r}{hint}")
        if name in spelled:
            raise OptionError(f"{file_name}: {key!r} and {spelled[name]!r} are the same option")
        spelled[name] = key
        try:
            values[name] = option.kind.from_toml(raw)
        except TypeError:
            raise OptionError(
                f"{file_name}: {key}: expected {option.kind.expected}, got {_toml_type(raw)}"
            ) from None
        except ValueError as exc:
            raise OptionError(f"{file_name}: {key}: {exc}") from None
    return values


def load_toml(path: str) -> dict[str, Any]:
    """The TOML document at ``path``; OptionError if it cannot be read or parsed."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise OptionError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{path}: not valid TOML: {exc}") from None


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _toml_type(value: object) -> str:
    names = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind is not dict else name
    return type(value).__name__
