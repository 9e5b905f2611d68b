"""Why a token was refused.

One class per reason, arranged so that a caller catches exactly what it can handle (as itsdangerous
does): ``BadToken`` for any refusal, ``BadSignature`` for anything that failed cryptographically.
Each class carries a short machine-readable ``reason`` that can go into an API answer or a metric label
without leaking details; the message says more for logs.
"""

from __future__ import annotations


class BadToken(Exception):
    """A token was refused. ``reason`` is stable and safe to show to a client."""

    reason = "bad_token"


class MalformedToken(BadToken):
    """Not a compact JWS of the expected shape: length, base64url, JSON, header or claim types."""

    reason = "malformed"


class BadSignature(BadToken):
    """The signature does not verify with any key allowed for this token."""

    reason = "bad_signature"


class UnknownKey(BadSignature):
    """No published, non-revoked key has the token's ``kid``."""

    reason = "unknown_key"


class TokenExpired(BadToken):
    """The signature is good but ``exp`` has passed."""

    reason = "expired"


class TokenNotYetValid(BadToken):
    """The signature is good but ``iat`` lies in the future beyond the allowed clock skew."""

    reason = "not_yet_valid"


class WrongTokenType(BadToken):
    """The signature is good but the header ``typ`` names another kind of token."""

    reason = "wrong_type"


class WrongIssuer(BadToken):
    """The signature is good but ``iss`` names another issuer."""

    reason = "wrong_issuer"


class BadHandle(BadToken):
    """The signature is good but ``sub`` is not a handle this service made under its current key.

    Only online verification resolves handles; a token signed by a withdrawn handle key ends here.
    """

    reason = "bad_handle"


class UntrustedIssuer(BadToken):
    """``iss`` names neither this service nor a peer on its trust list: nobody here can vouch for the key."""

    reason = "untrusted_issuer"
