"""`agentflow keys create|list|revoke`: per-tenant API keys for the gateway."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa

from agentflow_dagster.api.keys import SCOPES, create_key, list_keys, revoke_key
from agentflow_dagster.db import make_engine, migrate
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import Settings

postgres_option = click.option(
    "--postgres-url",
    envvar="AGENTFLOW_POSTGRES_URL",
    default=None,
    help="Postgres URL (default: the local stack's).",
)


def _engine(postgres_url: str | None) -> sa.Engine:
    url = postgres_url or build_resources(Settings())["postgres"].url
    migrate(url)
    return make_engine(url)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (only their sha256 is stored)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key acts for (lowercase, digits, '_').")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPES),
    default=("submit", "read"),
    show_default=True,
    help="Repeat for several scopes; admin implies all.",
)
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None, help="Expiry.")
@postgres_option
def create(
    tenant: str, scopes: tuple[str, ...], name: str, expires_in_days: float | None, postgres_url: str | None
) -> None:
    """Create a key and print it once; it cannot be shown again."""
    engine = _engine(postgres_url)
    try:
        expires = timedelta(days=expires_in_days) if expires_in_days else None
        key, record = create_key(engine, tenant, scopes, name=name, expires_in=expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(key)
    expiry = record.expires_at.isoformat() if record.expires_at else "never"
    click.echo(
        f"prefix {record.prefix}, tenant {record.tenant}, scopes {','.join(record.scopes)}, expires {expiry}",
        err=True,
    )


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@postgres_option
def list_(tenant: str | None, as_json: bool, postgres_url: str | None) -> None:
    """List keys (prefix, tenant, scopes, state), never their secrets."""
    engine = _engine(postgres_url)
    try:
        found = list_keys(engine, tenant)
    finally:
        engine.dispose()
    rows: list[dict[str, Any]] = [
        {
            "prefix": k.prefix,
            "tenant": k.tenant,
            "name": k.name,
            "scopes": list(k.scopes),
            "state": k.state(),
            "created_at": k.created_at.isoformat(),
            "expires_at": k.expires_at.isoformat() if k.expires_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in found
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'prefix':<14} {'tenant':<16} {'state':<8} {'scopes':<28} {'expires':<26} name")
    for r in rows:
        click.echo(
            f"{r['prefix']:<14} {r['tenant']:<16} {r['state']:<8} {','.join(r['scopes']):<28} "
            f"{r['expires_at'] or 'never':<26} {r['name']}"
        )


@keys.command("revoke")
@click.argument("prefix")
@postgres_option
def revoke(prefix: str, postgres_url: str | None) -> None:
    """Revoke a key by its prefix (the 12 hex characters after 'af_'); takes effect on the next request."""
    engine = _engine(postgres_url)
    try:
        record = revoke_key(engine, prefix)
    finally:
        engine.dispose()
    if record is None:
        raise click.ClickException(f"no API key with prefix {prefix!r}; see `agentflow keys list`")
    click.echo(f"revoked {record.prefix} (tenant {record.tenant})")
