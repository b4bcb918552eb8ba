"""Tests for tidings.auth: JwtVerifier and bearer_token."""

import base64
import datetime
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tidings.auth import JwtVerifier, bearer_token
from tidings.errors import AuthError

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"  # 35 bytes: long enough for HS256
OTHER_SECRET = "another-secret-another-secret-another"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "42", "iat": now, "exp": now + 300, **extra}


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64url(header)}.{b64url(payload)}."


@pytest.fixture
def hs() -> JwtVerifier:
    return JwtVerifier(secret=SECRET)


@pytest.fixture
def rs() -> JwtVerifier:
    return JwtVerifier(public_key_pem=public_pem(RSA_KEY))


@pytest.fixture
def es() -> JwtVerifier:
    return JwtVerifier(public_key_pem=public_pem(EC_KEY))


def assert_rejected(verifier: JwtVerifier, token: str, message: str) -> None:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert str(caught.value) == message


# --- construction -----------------------------------------------------------------


def test_algorithm_is_detected_from_the_key(
    hs: JwtVerifier, rs: JwtVerifier, es: JwtVerifier
) -> None:
    assert (hs.algorithm, rs.algorithm, es.algorithm) == ("HS256", "RS256", "ES256")


def test_public_key_may_come_from_a_certificate() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(EC_KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(EC_KEY, hashes.SHA256())
    )
    verifier = JwtVerifier(public_key_pem=cert.public_bytes(serialization.Encoding.PEM).decode())
    assert verifier.verify(jwt.encode(claims(), EC_KEY, algorithm="ES256")) == "42"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"secret": SECRET, "public_key_pem": public_pem(RSA_KEY)}],
    ids=["neither", "both"],
)
def test_exactly_one_key_is_required(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of secret"):
        JwtVerifier(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secret": "too-short"}, "at least 32 bytes"),
        ({"secret": public_pem(RSA_KEY) + "x" * 32}, "looks like a PEM key"),
        ({"public_key_pem": "not a key"}, "not a valid PEM"),
        ({"public_key_pem": private_pem(RSA_KEY)}, "not a valid PEM"),
        (
            {"public_key_pem": public_pem(rsa.generate_private_key(65537, 1024))},
            "at least 2048 bits",
        ),
        ({"public_key_pem": public_pem(ec.generate_private_key(ec.SECP384R1()))}, "P-256"),
        ({"secret": SECRET, "leeway_s": -1.0}, "leeway_s"),
    ],
    ids=["short-secret", "pem-secret", "garbage-pem", "private-pem", "rsa-1024", "p384", "leeway"],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JwtVerifier(**kwargs)


def test_unsupported_key_type_is_refused() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValueError, match="RSA or EC P-256"):
        JwtVerifier(public_key_pem=pem)


# --- accepted tokens --------------------------------------------------------------


def test_hs256_token_is_accepted(hs: JwtVerifier) -> None:
    assert hs.verify(jwt.encode(claims(exp=int(time.time()) + 60), SECRET, "HS256")) == "42"


def test_rs256_token_is_accepted(rs: JwtVerifier) -> None:
    assert rs.verify(jwt.encode(claims(sub="alice"), private_pem(RSA_KEY), "RS256")) == "alice"


def test_es256_token_is_accepted(es: JwtVerifier) -> None:
    assert es.verify(jwt.encode(claims(sub="bob"), EC_KEY, algorithm="ES256")) == "bob"


def test_token_without_exp_is_refused_by_default(hs: JwtVerifier) -> None:
    assert_rejected(hs, jwt.encode({"sub": "42"}, SECRET, "HS256"), "token has no exp claim")


def test_token_without_exp_is_accepted_when_allowed() -> None:
    verifier = JwtVerifier(secret=SECRET, require_exp=False)
    identity = verifier.identity(jwt.encode({"sub": "42"}, SECRET, "HS256"))
    assert identity == ("42", None)


def test_identity_carries_the_expiry(hs: JwtVerifier) -> None:
    exp = int(time.time()) + 60
    assert hs.identity(jwt.encode(claims(exp=exp), SECRET, "HS256")) == ("42", exp)


@pytest.mark.parametrize(
    "sub",
    ["42\r\nforged: yes", "a\nb", "nul\x00", "tab\t", "del\x7f", "c1\x85", "a/b", " ", "x" * 201],
    ids=["crlf", "lf", "nul", "tab", "del", "c1", "slash", "blank", "too-long"],
)
def test_sub_must_be_a_valid_user_id(hs: JwtVerifier, sub: str) -> None:
    """The same rule as the HTTP API's user ids (publish_rules.USER_PATTERN)."""
    token = jwt.encode(claims(sub=sub), SECRET, "HS256")
    assert_rejected(hs, token, "token sub is not a valid user id")


def test_longest_and_non_ascii_sub_are_accepted(hs: JwtVerifier) -> None:
    for sub in ("x" * 200, "Zoë 李"):
        assert hs.verify(jwt.encode(claims(sub=sub), SECRET, "HS256")) == sub


def test_leeway_absorbs_clock_skew() -> None:
    verifier = JwtVerifier(secret=SECRET, leeway_s=30)
    now = int(time.time())
    assert verifier.verify(jwt.encode(claims(exp=now - 10), SECRET, "HS256")) == "42"
    assert verifier.verify(jwt.encode(claims(nbf=now + 10), SECRET, "HS256")) == "42"


def test_matching_audience_and_issuer_are_accepted() -> None:
    verifier = JwtVerifier(secret=SECRET, audience="tidings", issuer="https://idp")
    token = jwt.encode(claims(aud=["other", "tidings"], iss="https://idp"), SECRET, "HS256")
    assert verifier.verify(token) == "42"


# --- rejected tokens --------------------------------------------------------------


def test_expired_token(hs: JwtVerifier) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 1), SECRET, "HS256")
    assert_rejected(hs, token, "token expired")


def test_token_not_yet_valid(hs: JwtVerifier) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 60), SECRET, "HS256")
    assert_rejected(hs, token, "token not yet valid")


@pytest.mark.parametrize(
    ("verifier_name", "token"),
    [
        ("hs", jwt.encode(claims(), OTHER_SECRET, "HS256")),
        ("rs", jwt.encode(claims(), rsa.generate_private_key(65537, 2048), "RS256")),
        ("es", jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), "ES256")),
    ],
    ids=["hs256", "rs256", "es256"],
)
def test_wrong_key_signature(
    verifier_name: str, token: str, request: pytest.FixtureRequest
) -> None:
    verifier: JwtVerifier = request.getfixturevalue(verifier_name)
    assert_rejected(verifier, token, "invalid token signature")


def test_tampered_payload_signature(hs: JwtVerifier) -> None:
    header, _, signature = jwt.encode(claims(), SECRET, "HS256").split(".")
    forged = f"{header}.{b64url(claims(sub='admin'))}.{signature}"
    assert_rejected(hs, forged, "invalid token signature")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "!!!.???.***", unsigned_token({"alg": "HS256"}, {})[:-1] + "%"],
)
def test_malformed_token(hs: JwtVerifier, token: str) -> None:
    assert_rejected(hs, token, "malformed token")


def test_non_numeric_exp_is_malformed(hs: JwtVerifier) -> None:
    assert_rejected(hs, jwt.encode(claims(exp="soon"), SECRET, "HS256"), "malformed token")


def test_payload_that_is_not_an_object_is_malformed(hs: JwtVerifier) -> None:
    token = jwt.api_jws.encode(b'["not", "claims"]', SECRET, algorithm="HS256")
    assert_rejected(hs, token, "malformed token")


@pytest.mark.parametrize(
    "payload",
    [{}, {"sub": ""}, {"sub": 42}, {"sub": None}, {"sub": ["42"]}],
    ids=["absent", "empty", "int", "null", "list"],
)
def test_sub_must_be_a_non_empty_string(hs: JwtVerifier, payload: dict[str, Any]) -> None:
    payload["exp"] = int(time.time()) + 60
    assert_rejected(hs, jwt.encode(payload, SECRET, "HS256"), "token has no sub claim")


def test_hs256_token_presented_to_rs256_verifier(rs: JwtVerifier) -> None:
    assert_rejected(rs, jwt.encode(claims(), SECRET, "HS256"), "token algorithm not accepted")


def test_rs256_token_presented_to_es256_verifier(es: JwtVerifier) -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert_rejected(es, token, "token algorithm not accepted")


def test_other_hmac_strength_is_not_accepted(hs: JwtVerifier) -> None:
    token = jwt.encode(claims(), SECRET + SECRET, "HS512")
    assert_rejected(hs, token, "token algorithm not accepted")


def test_key_confusion_public_key_as_hmac_secret(rs: JwtVerifier) -> None:
    """RFC 8725 §2.1: an HS256 token "signed" with the RSA public key must not pass."""
    header = b64url({"alg": "HS256", "typ": "JWT"})
    body = b64url(claims(sub="admin"))
    mac = hmac.new(public_pem(RSA_KEY).encode(), f"{header}.{body}".encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    assert_rejected(rs, f"{header}.{body}.{signature}", "token algorithm not accepted")


@pytest.mark.parametrize(
    "header",
    [{"alg": "none"}, {"alg": "None"}, {"alg": ""}, {"typ": "JWT"}],
    ids=["none", "None", "empty", "absent"],
)
@pytest.mark.parametrize("verifier_name", ["hs", "rs", "es"])
def test_unsigned_tokens_are_never_accepted(
    verifier_name: str, header: dict[str, str], request: pytest.FixtureRequest
) -> None:
    verifier: JwtVerifier = request.getfixturevalue(verifier_name)
    assert_rejected(verifier, unsigned_token(header, claims()), "token algorithm not accepted")


def test_pyjwt_alg_none_token_is_refused(hs: JwtVerifier) -> None:
    token = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert_rejected(hs, token, "token algorithm not accepted")


def test_wrong_audience() -> None:
    verifier = JwtVerifier(secret=SECRET, audience="tidings")
    token = jwt.encode(claims(aud="someone-else"), SECRET, "HS256")
    assert_rejected(verifier, token, "token audience not accepted")


def test_missing_audience() -> None:
    verifier = JwtVerifier(secret=SECRET, audience="tidings")
    assert_rejected(verifier, jwt.encode(claims(), SECRET, "HS256"), "token has no aud claim")


def test_audience_in_token_but_none_configured(hs: JwtVerifier) -> None:
    """RFC 7519 §4.1.3: a recipient not named in ``aud`` must reject the token."""
    token = jwt.encode(claims(aud="some-api"), SECRET, "HS256")
    assert_rejected(hs, token, "token audience not accepted")


def test_wrong_issuer() -> None:
    verifier = JwtVerifier(secret=SECRET, issuer="https://idp")
    token = jwt.encode(claims(iss="https://evil"), SECRET, "HS256")
    assert_rejected(verifier, token, "token issuer not accepted")


def test_missing_issuer() -> None:
    verifier = JwtVerifier(secret=SECRET, issuer="https://idp")
    assert_rejected(verifier, jwt.encode(claims(), SECRET, "HS256"), "token has no iss claim")


def test_auth_error_is_chained_to_the_pyjwt_cause(hs: JwtVerifier) -> None:
    with pytest.raises(AuthError) as caught:
        hs.verify("abc")
    assert isinstance(caught.value.__cause__, jwt.PyJWTError)


# --- bearer_token -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer\tabc", "abc"),
        ("Bearer eyJ.a-b_c~d+e/f==", "eyJ.a-b_c~d+e/f=="),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic YWJjOmRlZg==", None),
        ("abc", None),
        ("Bearerabc", None),
        ("Bearer a b", None),
        ("Bearer a=b", None),
        ("Bearer abc\r\n", None),
        ("Token abc", None),
    ],
)
def test_bearer_token(value: str | None, expected: str | None) -> None:
    assert bearer_token(value) == expected
