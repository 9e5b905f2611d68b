"""One signing key: public part, lifecycle state and, for the signer, the private key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import serialization

from signing import keys
from signing.keys import (
    ALGORITHMS,
    PrivateKey,
    PublicKey,
    jwk_thumbprint,
    key_alg,
    public_key_from_jwk,
    short_kid,
)

PENDING: Final = "pending"
ACTIVE: Final = "active"
RETIRED: Final = "retired"
REVOKED: Final = "revoked"
STATES: Final = frozenset({PENDING, ACTIVE, RETIRED, REVOKED})

# Members a JWK may carry here; anything else (x5u, jku, private "d") is refused rather than published.
_JWK_MEMBERS: Final = frozenset({"kid", "alg", "use", "kty", "crv", "x", "y"})


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, eq=False, slots=True)
class KeyRecord:
    """A key's metadata. The public key object is built once from ``public_jwk`` and kept.

    ``kid`` is normally the short thumbprint (see ``from_private_key``); nothing relies on that, and
    two keys may share a kid. ``retired_at`` (epoch seconds) is set for retired keys: they still verify,
    and stay published, until every token they signed has expired. Revoked keys never verify.
    """

    kid: str
    thumbprint: str
    alg: str
    public_jwk: dict[str, str]
    state: str
    retired_at: int | None = None
    private_key: PrivateKey | None = field(default=None, repr=False)
    public_key: PublicKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.alg not in ALGORITHMS:
            raise ValueError(f"key {self.kid}: unsupported algorithm {self.alg!r}")
        if self.state not in STATES:
            raise ValueError(f"key {self.kid}: unknown state {self.state!r}; expected one of {sorted(STATES)}")
        if self.state == RETIRED and self.retired_at is None:
            raise ValueError(f"key {self.kid}: a retired key needs retired_at")
        extra = self.public_jwk.keys() - _JWK_MEMBERS
        if extra:
            raise ValueError(f"key {self.kid}: unexpected JWK members {sorted(extra)}")
        public = public_key_from_jwk(self.public_jwk)
        if key_alg(public) != self.alg:
            raise ValueError(f"key {self.kid}: JWK is a {key_alg(public)} key, record says {self.alg}")
        thumbprint = jwk_thumbprint(self.public_jwk)
        if thumbprint != self.thumbprint:
            raise ValueError(f"key {self.kid}: thumbprint does not match the JWK")
        if not self.kid:
            raise ValueError("a key needs a kid")
        for member, expected in (("kid", self.kid), ("alg", self.alg), ("use", "sig")):
            if self.public_jwk.get(member, expected) != expected:
                raise ValueError(f"key {self.kid}: JWK {member} is not {expected!r}")
        if self.private_key is not None and _spki(self.private_key.public_key()) != _spki(public):
            raise ValueError(f"key {self.kid}: private key does not match the public JWK")
        # A private copy, complete with kid/alg/use, so the caller's dict cannot change a published key.
        jwk = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        jwk.update((k, self.public_jwk[k]) for k in ("kty", "crv", "x", "y") if k in self.public_jwk)
        object.__setattr__(self, "public_jwk", jwk)
        object.__setattr__(self, "public_key", public)

    @classmethod
    def from_private_key(cls, key: PrivateKey, state: str = ACTIVE, retired_at: int | None = None) -> KeyRecord:
        jwk = keys.public_jwk(key)
        return cls(
            kid=jwk["kid"],
            thumbprint=jwk_thumbprint(jwk),
            alg=jwk["alg"],
            public_jwk=jwk,
            state=state,
            retired_at=retired_at,
            private_key=key,
        )

    @classmethod
    def from_public_jwk(cls, jwk: dict[str, str], state: str, retired_at: int | None = None) -> KeyRecord:
        """A verification-only record; kid and alg are derived from the key material."""
        thumbprint = jwk_thumbprint(jwk)
        return cls(
            kid=short_kid(thumbprint),
            thumbprint=thumbprint,
            alg=key_alg(public_key_from_jwk(jwk)),
            public_jwk=jwk,
            state=state,
            retired_at=retired_at,
        )
