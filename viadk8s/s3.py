"""The store on S3 (or any S3-compatible server), with boto3.

Endpoint and credentials come from the standard AWS chain (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, profiles, IRSA, …). Transient failures are retried
by botocore with backoff; what is left is mapped to the worker's exit codes: unreachable
endpoint → InfraError (3, retry later), refused credentials or a missing bucket → SpecError (2).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from viadk8s.errors import InfraError, SpecError

CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=8)


def _etag(item: dict[str, Any]) -> str:
    """An object's ETag without the quotes some servers leave out of a copy's reply (SeaweedFS)."""
    return str(item.get("ETag", "")).strip('"')


class S3Store:
    """``s3://bucket/prefix``: keys live under the prefix."""

    def __init__(self, uri: str, addressing_style: str = "auto", max_attempts: int = 5) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise SpecError(f"store {uri!r} names no bucket; allowed: s3://BUCKET[/PREFIX]")
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix.strip("/")
        config = BotoConfig(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": addressing_style},
            max_pool_connections=64,
        )
        self.client: Any = boto3.session.Session().client("s3", config=config)
        self.max_attempts = max_attempts

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """One line for what went wrong, with the exit code that tells Kubernetes whether to retry."""
        where = f"s3://{self.bucket}/{self._key(key)}"
        try:
            yield
        except NoCredentialsError:
            raise SpecError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile"
            ) from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in CREDENTIAL_ERRORS:
                raise SpecError(
                    f"S3 refused the credentials while trying to {action} {where} ({code}): "
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            if code == "NoSuchBucket":
                raise SpecError(f"bucket {self.bucket!r} does not exist (store {self.uri})") from None
            raise InfraError(f"S3 error while trying to {action} {where}: {code or err}") from None
        except BotoCoreError as err:
            endpoint = self.client.meta.endpoint_url
            raise InfraError(
                f"S3 endpoint {endpoint} unreachable after {self.max_attempts} attempts ({action} {where}): {err}"
            ) from None

    def exists(self, key: str) -> bool:
        with self._errors("read", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise

    def read_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey"}:
                    raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from None
                raise

    def write_bytes(self, key: str, data: bytes) -> str:
        """Put under a temporary key, then copy to the final key: readers see all or nothing.
        Returns the object's ETag, the version :meth:`versions` lists for it."""
        final = self._key(key)
        parent, _, name = final.rpartition("/")
        temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=temporary, Body=data)
            try:
                copied = self.client.copy_object(
                    Bucket=self.bucket, Key=final, CopySource={"Bucket": self.bucket, "Key": temporary}
                )
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=temporary)
        return _etag(copied["CopyObjectResult"])

    def upload(self, key: str, path: Path) -> None:
        """Multipart upload by the transfer manager; S3 shows the object only once complete."""
        with self._errors("write", key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=TRANSFER)

    def download(self, key: str, path: Path) -> None:
        with self._errors("read", key):
            self.client.download_file(self.bucket, self._key(key), str(path), Config=TRANSFER)

    def versions(self, prefix: str) -> dict[str, str]:
        """Keys under a prefix (temporary ones excepted) with their ETags, from the listing alone."""
        full = self._key(prefix)
        skip = len(self.prefix) + 1 if self.prefix else 0
        found: dict[str, str] = {}
        with self._errors("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][skip:]
                    if not key.rpartition("/")[2].startswith("."):
                        found[key] = _etag(item)
        return found

    def list(self, prefix: str) -> Iterator[str]:
        return iter(self.versions(prefix))

    def local_path(self, key: str) -> Path | None:
        return None

    def move(self, key: str, new_key: str) -> None:
        """Copy, then delete the original: the object exists under one name or both, never none."""
        with self._errors("write", key):
            self.client.copy_object(
                Bucket=self.bucket, Key=self._key(new_key), CopySource={"Bucket": self.bucket, "Key": self._key(key)}
            )
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
