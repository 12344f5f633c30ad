"""API keys: random tokens shown once, stored as sha256 in Postgres, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import sqlalchemy as sa

from agentflow_dagster.events import NAME_PATTERN

Scope = Literal["submit", "approve", "read", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
KEY_PREFIX = "af"
_KEY_RE = re.compile(r"^af_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
_TENANT_RE = re.compile(NAME_PATTERN)
# Compared against when no row matches, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"agentflow-no-such-key").hexdigest()


def hash_key(key: str) -> str:
    """The stored form of a key: a 32-byte random secret needs no salt or slow hash."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never the secret)."""

    prefix: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """active, expired or revoked."""
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _row(row: sa.Row) -> ApiKey:
    return ApiKey(
        prefix=row.prefix,
        tenant=row.tenant,
        name=row.name,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def create_key(
    engine: sa.Engine,
    tenant: str,
    scopes: list[str] | tuple[str, ...],
    *,
    name: str = "",
    expires_in: timedelta | None = None,
) -> tuple[str, ApiKey]:
    """Store a new key and return (the secret key, shown only now, and its record)."""
    if not _TENANT_RE.match(tenant):
        raise ValueError(f"tenant {tenant!r} must match {NAME_PATTERN} (lowercase letters, digits, '_')")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes {unknown or '(none)'} are not valid; choose from {', '.join(SCOPES)}")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    expires_at = datetime.now(UTC) + expires_in if expires_in else None
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                "INSERT INTO api_keys (prefix, key_hash, tenant, name, scopes, expires_at) "
                "VALUES (:p, :h, :t, :n, :s, :e) RETURNING *"
            ),
            {
                "p": prefix,
                "h": hash_key(key),
                "t": tenant,
                "n": name,
                "s": sorted(set(scopes)),
                "e": expires_at,
            },
        ).one()
    return key, _row(row)


def list_keys(engine: sa.Engine, tenant: str | None = None) -> list[ApiKey]:
    """Every key (or one tenant's), newest first."""
    query = "SELECT * FROM api_keys" + (" WHERE tenant = :t" if tenant else "") + " ORDER BY created_at DESC"
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(sa.text(query), {"t": tenant})]


def revoke_key(engine: sa.Engine, prefix: str) -> ApiKey | None:
    """Mark a key revoked (idempotent); None when no key has this prefix."""
    prefix = prefix.removeprefix(f"{KEY_PREFIX}_").split("_", 1)[0]
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE prefix = :p RETURNING *"
            ),
            {"p": prefix},
        ).one_or_none()
    return _row(row) if row else None


def authenticate(engine: sa.Engine, presented: str) -> ApiKey | None:
    """The active key matching `presented`, else None (unknown, wrong secret, expired or revoked)."""
    match = _KEY_RE.match(presented)
    prefix = match[1] if match else ""
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE prefix = :p"), {"p": prefix}).one_or_none()
    stored = row.key_hash if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(stored, hash_key(presented)) or row is None:
        return None
    key = _row(row)
    return key if key.state() == "active" else None
