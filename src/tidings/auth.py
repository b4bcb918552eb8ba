"""JWT verification for STOMP connections (``--auth jwt``).

Implements the checks of RFC 7519 §7.2 with PyJWT, pinned to one algorithm chosen
from the configured key (RFC 8725 §3.1): HS256 for a shared secret, RS256 for an
RSA public key, ES256 for an EC P-256 public key (RFC 7518 §3.2-3.4). ``alg: none``
is never accepted. ``exp`` (RFC 7519 §4.1.4) is required unless ``require_exp=False``
(``--jwt-allow-no-exp``), ``nbf`` (§4.1.5) is honoured when present, and ``aud``/``iss``
(§4.1.3, §4.1.1) are checked when an audience or issuer is configured. ``sub`` (§4.1.2)
must be a user id by the HTTP API's rule (``publish_rules.USER_PATTERN``): it becomes
``/user/<sub>/...`` destinations and the CONNECTED frame's ``user-name`` header.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tidings.errors import AuthError
from tidings.publish_rules import valid_user

if TYPE_CHECKING:
    from tidings.config import Config

__all__ = ["Identity", "JwtVerifier", "bearer_token", "verifier_for"]

MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 §3.2: key at least as long as the SHA-256 output
MIN_RSA_KEY_BITS = 2048  # RFC 7518 §3.3

VerificationKey = str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token (scheme is case-insensitive, RFC 9110 §11.1)
_BEARER = re.compile(r"[ \t]*bearer[ \t]+([A-Za-z0-9\-._~+/]+=*)[ \t]*", re.IGNORECASE)

# Most specific first: InvalidSignatureError is a DecodeError, so it must precede it.
_FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "invalid token signature"),
    (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
)


class Identity(NamedTuple):
    """Who a verified token names, and until when (``exp``, Unix seconds; None: no ``exp``)."""

    user: str
    expires_at: float | None


class JwtVerifier:
    """Verifies bearer JWTs and returns the user id carried in ``sub``."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_pem: str | None = None,
        leeway_s: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
        require_exp: bool = True,
    ) -> None:
        """Configure exactly one of ``secret`` (HS256) or ``public_key_pem`` (RS256/ES256).

        ``audience`` and ``issuer``, when set, must match the ``aud`` and ``iss``
        claims (RFC 7519 §4.1.3, §4.1.1); a token carrying ``aud`` is rejected when
        no audience is configured. ``leeway_s`` absorbs clock skew for exp/nbf/iat.
        ``require_exp=False`` accepts tokens without ``exp`` (they never expire).
        """
        self._key: VerificationKey
        if secret is not None and public_key_pem is None:
            self._key, self._algorithm = _hmac_key(secret), "HS256"
        elif public_key_pem is not None and secret is None:
            self._key, self._algorithm = _public_key(public_key_pem)
        else:
            raise ValueError("JwtVerifier needs exactly one of secret (HS256) or public_key_pem")
        if leeway_s < 0:
            raise ValueError("leeway_s must not be negative")
        self._leeway_s = leeway_s
        self._audience = audience
        self._issuer = issuer
        self._required = ["exp"] if require_exp else []

    @property
    def algorithm(self) -> str:
        """The single JWS algorithm this verifier accepts."""
        return self._algorithm

    @property
    def leeway_s(self) -> float:
        """Clock skew allowed past ``exp``: a session ends this long after its token's exp."""
        return self._leeway_s

    def verify(self, token: str) -> str:
        """Verify ``token`` and return its ``sub`` claim; raise ``AuthError`` otherwise."""
        return self.identity(token).user

    def identity(self, token: str) -> Identity:
        """Verify ``token``: its ``sub`` and ``exp``; raise ``AuthError`` otherwise."""
        try:
            claims = self._decode(token)
        except jwt.PyJWTError as err:
            reason = (
                "expired_token" if isinstance(err, jwt.ExpiredSignatureError) else "invalid_token"
            )
            raise AuthError(_failure_message(err), reason) from err
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("token has no sub claim")
        if not valid_user(subject):
            # CR, LF, NUL in a sub would reach STOMP headers and logs (issue 14).
            raise AuthError("token sub is not a valid user id")
        exp = claims.get("exp")  # PyJWT checked it is a number when present
        return Identity(subject, float(exp) if exp is not None else None)

    def _decode(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            key=self._key,
            algorithms=[self._algorithm],
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._leeway_s,
            # sub is checked in identity(): a user id by the HTTP API's rule
            options={"verify_sub": False, "require": self._required},
        )


def verifier_for(config: Config) -> JwtVerifier:
    """The verifier the ``--jwt-*`` options describe; ValueError for a bad key."""
    return JwtVerifier(
        secret=config.jwt_secret,
        public_key_pem=config.jwt_public_key,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        require_exp=not config.jwt_allow_no_exp,
    )


def bearer_token(value: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` value (RFC 6750 §2.1), else None."""
    if value is None:
        return None
    match = _BEARER.fullmatch(value)
    return match.group(1) if match else None


def _failure_message(err: jwt.PyJWTError) -> str:
    if isinstance(err, jwt.MissingRequiredClaimError):
        return f"token has no {err.claim} claim"
    for error_type, message in _FAILURES:
        if isinstance(err, error_type):
            return message
    return "malformed token"


def _hmac_key(secret: str) -> str:
    if len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
        raise ValueError(
            f"HS256 secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 §3.2)"
        )
    if "-----BEGIN" in secret:
        raise ValueError("secret looks like a PEM key; pass it as public_key_pem instead")
    return secret


def _public_key(pem: str) -> tuple[VerificationKey, str]:
    """Load a PEM public key (or certificate) and pick its algorithm (RFC 7518 §3.3, §3.4)."""
    key = _load_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"RSA key must be at least {MIN_RSA_KEY_BITS} bits (RFC 7518 §3.3)")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC key must be on P-256 for ES256, not {key.curve.name}")
        return key, "ES256"
    raise ValueError("public_key_pem must hold an RSA or EC P-256 public key")


def _load_public_key(pem: bytes) -> object:
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ValueError("public_key_pem is not a valid PEM public key or certificate") from err
