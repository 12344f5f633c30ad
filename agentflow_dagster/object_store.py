"""Object store clients without Dagster: S3 (SeaweedFS locally, MinIO in production) through the `minio`
client, or a local directory (an explicit opt-in for unit tests). `resources.object_store` wraps them;
the CLI builds them directly (`build_store`) so that it starts without importing Dagster.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,1023}$")


class ObjectStoreError(RuntimeError):
    """The object store is unreachable or refused an operation (retryable)."""


class ObjectNotFound(KeyError):
    """No object under that key."""


def validate_key(key: str) -> str:
    """Reject keys that could escape their bucket (traversal, absolute paths, odd characters)."""
    parts = key.split("/")
    if not _KEY_RE.match(key) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"invalid object key {key!r}: use letters, digits, '._-' and '/'-separated non-empty "
            "segments, no '..' and no leading '/'"
        )
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str  # content hash (local) or ETag/version id (S3)


class ObjectStore(Protocol):
    def ensure_bucket(self, bucket: str) -> None: ...
    def list_buckets(self) -> list[str]: ...
    def put(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectInfo: ...
    def get(self, bucket: str, key: str) -> bytes: ...
    def stat(self, bucket: str, key: str) -> ObjectInfo: ...
    def delete(self, bucket: str, key: str) -> None: ...
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...


class LocalObjectStore:
    """Buckets are folders under `root`; versions are content hashes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        validate_key(bucket)
        return self.root / bucket / validate_key(key)

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / validate_key(bucket)).mkdir(parents=True, exist_ok=True)

    def list_buckets(self) -> list[str]:
        if not self.root.is_dir():
            raise ObjectStoreError(f"object store directory {self.root} does not exist")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        path = self._path(bucket, key)
        if not path.parent.parent.exists() and not (self.root / bucket).is_dir():
            raise ObjectStoreError(f"bucket {bucket!r} does not exist under {self.root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: readers never see half an object
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest()[:32])

    def get(self, bucket: str, key: str) -> bytes:
        path = self._path(bucket, key)
        if not path.is_file():
            raise ObjectNotFound(f"{bucket}/{key}")
        return path.read_bytes()

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        data = self.get(bucket, key)
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest()[:32])

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / validate_key(bucket)
        if not base.is_dir():
            raise ObjectStoreError(f"bucket {bucket!r} does not exist under {self.root}")
        for path in sorted(base.rglob("*")):
            key = path.relative_to(base).as_posix()
            if path.is_file() and not path.name.startswith(".") and key.startswith(prefix):
                yield self.stat(bucket, key)


class MinioObjectStore:
    """MinIO / any S3 endpoint through the `minio` client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool = False):
        from minio import Minio

        endpoint = endpoint.removeprefix("http://").removeprefix("https://")
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        self.endpoint = endpoint

    def _wrap(self, exc: Exception) -> ObjectStoreError:
        return ObjectStoreError(f"object store at {self.endpoint} failed: {exc}")

    def ensure_bucket(self, bucket: str) -> None:
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except Exception as exc:
            raise self._wrap(exc) from exc

    def list_buckets(self) -> list[str]:
        try:
            return sorted(b.name for b in self.client.list_buckets())
        except Exception as exc:
            raise self._wrap(exc) from exc

    def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        validate_key(key)
        try:
            res = self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except Exception as exc:
            raise self._wrap(exc) from exc
        return ObjectInfo(key, len(data), res.version_id or (res.etag or "").strip('"'))

    def get(self, bucket: str, key: str) -> bytes:
        from minio.error import S3Error

        validate_key(key)
        try:
            resp = self.client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise ObjectNotFound(f"{bucket}/{key}") from exc
            raise self._wrap(exc) from exc
        except Exception as exc:
            raise self._wrap(exc) from exc
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        from minio.error import S3Error

        try:
            st = self.client.stat_object(bucket, validate_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(f"{bucket}/{key}") from exc
            raise self._wrap(exc) from exc
        except Exception as exc:
            raise self._wrap(exc) from exc
        return ObjectInfo(key, st.size or 0, st.version_id or (st.etag or "").strip('"'))

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(bucket, validate_key(key))
        except Exception as exc:
            raise self._wrap(exc) from exc

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True):
                yield ObjectInfo(obj.object_name or "", obj.size or 0, (obj.etag or "").strip('"'))
        except Exception as exc:
            raise self._wrap(exc) from exc


def build_store(  # nosec B107 - an empty default means "no key given", not a password
    endpoint: str = "",
    access_key: str = "",
    secret_key: str = "",
    credentials_file: str = "",
    secure: bool = False,
    local_dir: str = "",
) -> ObjectStore:
    """S3 at `endpoint` (keys given, or read from `credentials_file`), else the directory `local_dir`."""
    if endpoint:
        if not (access_key and secret_key) and credentials_file:
            access_key, secret_key = _read_credentials(credentials_file, endpoint)
        return MinioObjectStore(endpoint, access_key, secret_key, secure)
    if local_dir:
        return LocalObjectStore(local_dir)
    raise ValueError(
        "ObjectStoreResource: no endpoint: set AGENTFLOW_S3_ENDPOINT (or run `agentflow up` for the "
        "embedded S3 server), or pass local_dir=... to opt into a local directory"
    )


def _read_credentials(path: str, endpoint: str) -> tuple[str, str]:
    try:
        raw = json.loads(Path(path).read_text())
        return str(raw["access_key"]), str(raw["secret_key"])
    except (OSError, ValueError, KeyError) as exc:
        raise ObjectStoreError(
            f"no S3 keys for {endpoint}: {path} is missing or unreadable ({exc}); run `agentflow up` to "
            "start the embedded S3 server, or set AGENTFLOW_S3_ACCESS_KEY and AGENTFLOW_S3_SECRET_KEY"
        ) from exc
