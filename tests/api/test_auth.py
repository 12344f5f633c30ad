"""Keys: missing, invalid, expired, revoked, wrong scope; the CLI; secrets never logged."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from agentflow_dagster.api.keys import authenticate, create_key, hash_key, revoke_key
from agentflow_dagster.cli import main
from tests.api.conftest import Keys

BODY = {"workflow": "support_triage", "inputs": {"message": "my invoice is wrong"}}


def test_missing_and_garbage_keys_are_401_with_a_challenge(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = client.get("/v1/workflows/plan-0123456789abcdef0123", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_wrong_secret_with_a_real_prefix_is_401(client: TestClient, keys: Keys) -> None:
    real = keys("acme")["Authorization"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    r = client.get("/v1/workflows/plan-0123456789abcdef0123", headers={"Authorization": forged})
    assert r.status_code == 401


def test_expired_and_revoked_keys_are_401(client: TestClient, keys: Keys, engine: sa.Engine) -> None:
    expired = keys("acme", "read", expires_in=timedelta(seconds=-1))
    assert client.get("/v1/workflows/plan-0123456789abcdef0123", headers=expired).status_code == 401
    live = keys("acme", "read")
    assert client.get("/v1/workflows/plan-0123456789abcdef0123", headers=live).status_code == 404
    prefix = live["Authorization"].split("_")[1]
    assert revoke_key(engine, prefix) is not None
    assert client.get("/v1/workflows/plan-0123456789abcdef0123", headers=live).status_code == 401


def test_scopes_are_enforced_and_admin_implies_all(client: TestClient, keys: Keys) -> None:
    reader = keys("acme", "read")
    r = client.post("/v1/workflows", json=BODY, headers=reader)
    assert r.status_code == 403 and "submit" in r.json()["detail"]
    submitter = keys("acme", "submit")
    assert (
        client.get("/v1/search", params={"q": "x", "collection": "nothing"}, headers=submitter).status_code
        == 403
    )
    plan = client.post("/v1/workflows", json=BODY, headers=submitter).json()["plan_id"]
    r = client.post(
        f"/v1/workflows/{plan}/approvals", json={"task_id": "draft", "decision": "approve"}, headers=submitter
    )
    assert r.status_code == 403
    admin = keys("acme", "admin")
    assert client.get(f"/v1/workflows/{plan}", headers=admin).status_code == 200


def test_only_the_hash_is_stored(engine: sa.Engine) -> None:
    key, record = create_key(engine, "acme", ["read"])
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM api_keys WHERE prefix = :p"), {"p": record.prefix}).one()
    assert key not in str(tuple(stored)) and stored.key_hash == hash_key(key)
    assert authenticate(engine, key) is not None
    assert authenticate(engine, key + "x") is None


def test_bad_tenant_or_scope_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="tenant"):
        create_key(engine, "Acme'; DROP TABLE api_keys;--", ["read"])
    with pytest.raises(ValueError, match="scopes"):
        create_key(engine, "acme", ["root"])


def test_cli_create_list_revoke(client: TestClient, pg_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--tenant", "cli_tenant", "--scope", "read", "--postgres-url", pg_url]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("af_")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/workflows/plan-0123456789abcdef0123", headers=headers).status_code == 404
    listed = runner.invoke(main, ["keys", "list", "--tenant", "cli_tenant", "--postgres-url", pg_url])
    prefix = key.split("_")[1]
    assert prefix in listed.output and key not in listed.output and "active" in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", prefix, "--postgres-url", pg_url])
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/v1/workflows/plan-0123456789abcdef0123", headers=headers).status_code == 401
    missing = runner.invoke(main, ["keys", "revoke", "000000000000", "--postgres-url", pg_url])
    assert missing.exit_code != 0


def test_keys_never_reach_the_logs(client: TestClient, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    headers = keys("acme")
    secret = headers["Authorization"].removeprefix("Bearer ")
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/workflows", json=BODY, headers=headers)
        client.get("/v1/workflows/plan-0123456789abcdef0123", headers=headers)
        client.get("/v1/workflows/plan-0123456789abcdef0123", headers={"Authorization": secret[:-1]})
    text = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    assert secret not in text and secret[:-1] not in text
