"""KeyRing: secret format, hashing with the pepper, lookups by hash, the TTL cache."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy.exc import OperationalError

from gateway.auth.keys import MASTER_KEY_ID, KeyRing, derive_pepper
from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.store.keys import KeyRecord

PEPPER = b"p" * 32
MASTER = "master-key-" + "x" * 30


class FakeKeyStore:
    """The two lookups KeyRing makes, counted."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.calls = 0
        self.fail = False

    def _call(self) -> None:
        self.calls += 1
        if self.fail:
            raise OperationalError("SELECT", {}, Exception("down"))

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        self._call()
        return next((r for r in self.records.values() if r.secret_hash == secret_hash), None)

    def get(self, key_id: str) -> KeyRecord | None:
        self._call()
        return next((r for r in self.records.values() if r.id == key_id), None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(ring: KeyRing, secret: str, **changes) -> KeyRecord:
    base = KeyRecord(
        id="key_00000000000000aa",
        name="n",
        prefix=secret[:12],
        secret_hash=ring.hash_secret(secret),
        metadata={},
        created_at=datetime.now(UTC),
        expires_at=None,
        revoked_at=None,
        allowed_models=None,
        rate_limit_general=None,
        rate_limit_ai=None,
        tokens_per_minute=None,
        tokens_per_day=None,
        budget_tokens_day=None,
        budget_tokens_month=None,
        max_tokens_cap=None,
    )
    return replace(base, **changes)


@pytest.fixture
def parts():
    store, clock = FakeKeyStore(), Clock()
    ring = KeyRing(MASTER, store, pepper=PEPPER, cache_seconds=5, clock=clock)  # type: ignore[arg-type]
    return ring, store, clock


def test_secrets_are_recognisable_and_random(parts) -> None:
    ring, _, _ = parts
    issued = {ring.issue_secret() for _ in range(50)}
    assert len({secret for secret, _, _ in issued}) == 50
    for secret, prefix, digest in issued:
        assert re.fullmatch(r"aip_[A-Za-z0-9_-]{43}", secret)
        assert prefix == secret[:12]
        assert digest == hmac.new(PEPPER, secret.encode(), hashlib.sha256).hexdigest()
        assert "." not in secret  # never mistaken for a JWT


def test_the_pepper_is_explicit_or_derived_from_the_jwt_secret() -> None:
    explicit = Settings(key_hash_pepper="q" * 40, jwt_secret="j" * 40)
    assert derive_pepper(explicit) == b"q" * 40
    derived = derive_pepper(Settings(jwt_secret="j" * 40))
    assert derived not in (b"j" * 40, b"") and len(derived) == 32
    assert derive_pepper(Settings(jwt_secret="k" * 40)) != derived
    assert derive_pepper(Settings(jwt_secret="j" * 40)) == derived


def test_the_master_key_needs_no_database_and_is_logged_once(parts, caplog) -> None:
    ring, store, _ = parts
    caplog.set_level(logging.INFO, logger="gateway")
    assert [ring.identify(MASTER) for _ in range(3)] == [MASTER_KEY_ID] * 3
    assert ring.is_active(MASTER_KEY_ID)
    assert store.calls == 0
    assert caplog.text.count("master key is in use") == 1
    assert MASTER not in caplog.text


def test_strings_that_are_not_managed_keys_never_reach_the_database(parts) -> None:
    ring, store, _ = parts
    for presented in ("", "guess", MASTER + "x", "sk-something", "aip"):
        assert ring.identify(presented) is None
    assert not ring.is_active("someone-else")
    assert store.calls == 0


def test_a_managed_key_is_found_by_its_hash_and_cached(parts) -> None:
    ring, store, clock = parts
    secret, _, _ = ring.issue_secret()
    store.records["k"] = _record(ring, secret)
    assert ring.identify(secret) == "key_00000000000000aa"
    assert ring.identify(secret) == "key_00000000000000aa"
    assert store.calls == 1
    clock.now += 5.01
    assert ring.identify(secret) == "key_00000000000000aa"
    assert store.calls == 2


def test_unknown_secrets_are_cached_too(parts) -> None:
    ring, store, clock = parts
    unknown = ring.issue_secret()[0]
    assert ring.identify(unknown) is None and ring.identify(unknown) is None
    assert store.calls == 1


def test_the_stored_hash_is_compared_in_constant_time(parts, monkeypatch) -> None:
    ring, store, _ = parts
    secret, _, _ = ring.issue_secret()
    store.records["k"] = _record(ring, secret)
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    ring.identify(secret)
    assert (ring.hash_secret(secret), ring.hash_secret(secret)) in compared


def test_a_revocation_applies_once_the_cache_entry_expires(parts) -> None:
    ring, store, clock = parts
    secret, _, _ = ring.issue_secret()
    store.records["k"] = _record(ring, secret)
    assert ring.identify(secret) and ring.is_active("key_00000000000000aa")
    store.records["k"] = replace(store.records["k"], revoked_at=datetime.now(UTC))
    clock.now += 4.9
    assert ring.identify(secret) and ring.is_active("key_00000000000000aa")  # cached: within the documented delay
    clock.now += 0.2
    assert ring.identify(secret) is None
    assert not ring.is_active("key_00000000000000aa")


def test_forget_applies_a_change_at_once(parts) -> None:
    ring, store, _ = parts
    secret, _, _ = ring.issue_secret()
    store.records["k"] = _record(ring, secret)
    assert ring.identify(secret)
    store.records["k"] = replace(store.records["k"], revoked_at=datetime.now(UTC))
    ring.forget()
    assert ring.identify(secret) is None


def test_expiry_is_exact_even_while_cached(parts) -> None:
    ring, store, _ = parts
    secret, _, _ = ring.issue_secret()
    expires = datetime.now(UTC) + timedelta(hours=1)
    store.records["k"] = _record(ring, secret, expires_at=expires)
    assert ring.identify(secret) and ring.is_active("key_00000000000000aa")
    with time_machine.travel(expires + timedelta(seconds=1)):
        assert ring.identify(secret) is None
        assert not ring.is_active("key_00000000000000aa")
    assert store.calls == 2  # one by hash, one by id: the expiry needed no new lookup


def test_a_database_outage_is_a_503_but_the_master_key_still_works(parts) -> None:
    ring, store, _ = parts
    store.fail = True
    with pytest.raises(ServiceUnavailable) as caught:
        ring.identify(ring.issue_secret()[0])
    assert caught.value.code == 503
    with pytest.raises(ServiceUnavailable):
        ring.is_active("key_00000000000000aa")
    assert ring.identify(MASTER) == MASTER_KEY_ID


def test_no_cache_at_zero_seconds() -> None:
    store = FakeKeyStore()
    ring = KeyRing(MASTER, store, pepper=PEPPER, cache_seconds=0)  # type: ignore[arg-type]
    secret = ring.issue_secret()[0]
    ring.identify(secret)
    ring.identify(secret)
    assert store.calls == 2
