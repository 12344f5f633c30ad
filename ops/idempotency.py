"""Task idempotency: outputs keyed by (plan_id, task_id, input digest) and a Redis lock per task."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis as redis_lib
import sqlalchemy as sa

from agentflow_dagster.db import transaction
from agentflow_dagster.names import BUCKET_ARTIFACTS
from resources.object_store import ObjectStore

# Outputs above this size go to the object store; the row keeps only the reference.
INLINE_OUTPUT_LIMIT = 256 * 1024

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def input_digest(material: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a task's output."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class TaskOutputStore:
    """The `task_outputs` table, with large outputs by reference in the artifacts bucket."""

    def __init__(self, engine: sa.Engine, objects: ObjectStore | None = None):
        self.engine = engine
        self.objects = objects

    def get(
        self, plan_id: str, task_key: str, digest: str, conn: sa.Connection | None = None
    ) -> dict[str, Any] | None:
        """The stored result of this task execution, if one completed before (on `conn` when given)."""
        with transaction(conn if conn is not None else self.engine) as tx:
            row = tx.execute(
                sa.text(
                    "SELECT output, output_ref FROM task_outputs "
                    "WHERE plan_id = :p AND task_id = :t AND input_digest = :d"
                ),
                {"p": plan_id, "t": task_key, "d": digest},
            ).first()
        if row is None:
            return None
        if row.output_ref and self.objects is not None:
            loaded: dict[str, Any] = json.loads(self.objects.get(BUCKET_ARTIFACTS, row.output_ref))
            return loaded
        return dict(row.output) if row.output is not None else None

    def put(
        self,
        plan_id: str,
        task_key: str,
        digest: str,
        agent: str,
        provider: str,
        result: dict[str, Any],
        conn: sa.Connection | None = None,
    ) -> None:
        """Store a completed result (in `conn`'s transaction when given); the first writer wins."""
        blob = json.dumps(result, ensure_ascii=False, default=str)
        output: str | None = blob
        ref: str | None = None
        if len(blob) > INLINE_OUTPUT_LIMIT and self.objects is not None:
            ref = f"task-outputs/{plan_id}/{task_key.replace('[', '.').replace(']', '')}/{digest}.json"
            self.objects.ensure_bucket(BUCKET_ARTIFACTS)
            self.objects.put(BUCKET_ARTIFACTS, ref, blob.encode(), "application/json")
            output = None
        with transaction(conn if conn is not None else self.engine) as tx:
            tx.execute(
                sa.text(
                    "INSERT INTO task_outputs (plan_id, task_id, input_digest, agent, output, output_ref, "
                    "provider) VALUES (:p, :t, :d, :a, CAST(:o AS jsonb), :r, :pr) ON CONFLICT DO NOTHING"
                ),
                {"p": plan_id, "t": task_key, "d": digest, "a": agent, "o": output, "r": ref, "pr": provider},
            )


class TaskLock:
    """`SET key token NX PX ttl`; released only by its owner, so an expired lock is never freed by mistake."""

    def __init__(self, client: redis_lib.Redis, key: str, ttl_ms: int, owner: str = ""):
        self.client, self.key, self.ttl_ms = client, key, ttl_ms
        # The owner (a Dagster run id) travels in the token, so a waiter can tell whose lock it is.
        self.token = f"{owner}/{uuid.uuid4().hex}"
        self.held = False

    def acquire(self) -> bool:
        """Try once; True when this worker now owns the lock."""
        self.held = bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    def release(self) -> None:
        """Delete the key only if it still holds our token."""
        if self.held:
            self.client.eval(_RELEASE, 1, self.key, self.token)
            self.held = False

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def break_if(self, is_dead: Callable[[str], bool]) -> bool:
        """Delete the lock when its owner is dead (e.g. a SIGKILLed run worker); True when it was deleted."""
        holder = self.holder()
        if holder is None or "/" not in holder:
            return False
        owner = holder.split("/", 1)[0]
        if not owner or not is_dead(owner):
            return False
        return bool(self.client.eval(_RELEASE, 1, self.key, holder))


def lock_key(plan_id: str, task_key: str) -> str:
    """Redis key of the lock for one task of one plan."""
    return f"agentflow:task-lock:{plan_id}:{task_key}"


def wait_for_lock(
    lock: TaskLock,
    wait_s: float,
    poll_s: float = 0.2,
    owner_dead: Callable[[str], bool] | None = None,
    check_every_s: float = 2.0,
) -> bool:
    """Acquire within `wait_s`; False when another worker kept it the whole time.

    With `owner_dead`, a lock whose owner has died is taken over instead of waiting out its TTL.
    """
    deadline = time.monotonic() + wait_s
    next_check = time.monotonic()
    while not lock.acquire():
        now = time.monotonic()
        if owner_dead is not None and now >= next_check:
            next_check = now + check_every_s
            if lock.break_if(owner_dead):
                continue
        if now >= deadline:
            return False
        time.sleep(poll_s)
    return True
