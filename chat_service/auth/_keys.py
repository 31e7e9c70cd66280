"""Verification keys, parsed once: per key id, one `PyJWK` bound to each algorithm it may verify."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jwt import PyJWK, PyJWTError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Minimum secret length per HMAC algorithm: the hash's output size (RFC 7518, section 3.2).
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS) | {"EdDSA"}


def _fitting_algorithms(jwk: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """The allowed algorithms this JWK can verify, judged by its key type and curve, never by a token.

    Symmetric (`oct`) keys in a JWK set fit nothing: a published HMAC key would let anyone sign.
    """
    kty, crv, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    fitting = []
    for alg in sorted(allowed):
        if declared is not None and alg != declared:
            continue
        if (
            (kty == "RSA" and alg in RSA_ALGORITHMS)
            or (kty == "EC" and EC_ALGORITHMS.get(alg) == crv)
            or (kty == "OKP" and crv == "Ed25519" and alg == "EdDSA")
        ):
            fitting.append(alg)
    return fitting


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot of keys: `find(kid, alg)` is one or two dict look-ups."""

    by_kid: Mapping[str | None, Mapping[str, PyJWK]] = field(default_factory=dict)
    fingerprint: frozenset[str] = frozenset()  # the JWKs it was built from: equal sets mean unchanged keys

    def find(self, kid: str | None, alg: str) -> PyJWK | None:
        keys = self.by_kid.get(kid)
        if keys is None and kid is None and len(self.by_kid) == 1:
            # A token without `kid` may use the only key there is (common with a single signing key).
            keys = next(iter(self.by_kid.values()))
        return None if keys is None else keys.get(alg)

    def knows(self, kid: str | None) -> bool:
        return kid in self.by_kid

    def __len__(self) -> int:
        return len(self.by_kid)


def secret_key_set(secret: bytes, algorithms: Iterable[str]) -> KeySet:
    """The shared HMAC secret, bound to each configured HS algorithm; tokens' `kid` is not consulted."""
    jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    return KeySet({None: {alg: PyJWK(jwk, alg) for alg in algorithms}})


def parse_jwks(document: object, algorithms: Iterable[str]) -> KeySet:
    """Parse a JWK set document; keys that are not for signatures, or fit no allowed algorithm, are skipped.

    Raises ValueError when the document is not a JWK set or holds no usable key, so that a broken
    answer from the identity provider never replaces keys that work.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    allowed = frozenset(algorithms)
    by_kid: dict[str | None, dict[str, PyJWK]] = {}
    used: set[str] = set()
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        bound: dict[str, PyJWK] = {}
        for alg in _fitting_algorithms(jwk, allowed):
            try:
                bound[alg] = PyJWK(jwk, alg)
            except (PyJWTError, ValueError, TypeError):
                continue  # a malformed key: skip it, keep the others
        if bound:
            by_kid.setdefault(kid, {}).update(bound)
            used.add(json.dumps(jwk, sort_keys=True))
    if not by_kid:
        raise ValueError("the JWK set holds no usable signing key")
    return KeySet(by_kid, frozenset(used))
