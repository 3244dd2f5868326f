"""S3 adapter (boto3), for AWS or any S3-compatible server such as SeaweedFS.

Credentials come from the settings (``SIGNWATCH_S3_ACCESS_KEY``/``_SECRET_KEY``) or boto3's own
chain (environment, profile, instance role); none are ever written to the repository. An https
endpoint whose certificate a private CA signed is trusted through ``SIGNWATCH_S3_CA_BUNDLE``.
"""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from signwatch.ports.store import ObjectNotFound, check_key


class S3Store:
    def __init__(
        self,
        bucket: str,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        create_bucket: bool = True,
        ca_bundle: str | None = None,
    ) -> None:
        self.bucket = bucket
        verify = ca_bundle or None  # None: boto3's own CA bundle (https) or nothing to verify (http)
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            verify=verify,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )
        # Readiness asks the server now, quickly, once: no retries, short timeouts (a down or hung
        # S3 answers "not ready" within about two seconds instead of after the data client's retries).
        self._probe = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region, verify=verify,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=1, read_timeout=1),
        )
        self._create_bucket = create_bucket
        self._bucket_checked = False

    def _ensure_bucket(self) -> None:
        if self._bucket_checked or not self._create_bucket:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as create_exc:
                code = create_exc.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_checked = True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._ensure_bucket()
        self._client.put_object(
            Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type
        )
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise

    def open(self, key: str):
        """The object's body as a binary stream (``read(n)``, ``close()``): read in pieces, never whole."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=check_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        self._ensure_bucket()
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ping(self) -> bool:
        """True when the bucket answers a HEAD now."""
        try:
            self._probe.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            if self._bucket_checked or exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                return False
        except BotoCoreError:
            return False
        try:  # the server answers but the bucket is missing: create it, as put would
            self._ensure_bucket()
            return True
        except (ClientError, BotoCoreError):
            return False


def open_url(url, credentials, create_bucket: bool = True) -> S3Store:
    """``s3://bucket[?endpoint=https://host:port&region=...]`` with the credentials' keys and CA bundle."""
    if not url.parsed.netloc:
        from signwatch.ports import UnsupportedURL

        raise UnsupportedURL(f"s3 URL needs a bucket: {url.redacted!r}")
    s3 = credentials.s3.checked()
    return S3Store(bucket=url.parsed.netloc, endpoint=url.query.get("endpoint") or None, access_key=s3.access_key,
                   secret_key=s3.secret_key, region=url.query.get("region", s3.region),
                   create_bucket=create_bucket, ca_bundle=s3.ca_bundle)
