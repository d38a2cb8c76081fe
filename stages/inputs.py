"""Reading inputs: local files and S3 objects (ranged GETs), for the stages that open them.

This sits beneath the stages (which never import the pipeline); pipeline.storage builds the
output stores on the same S3 clients. S3 goes through boto3 with its standard credential chain;
credentials are never read, logged or stored by vidcurate. botocore's ``standard`` retry mode
retries throttling and transient errors with exponential backoff (``storage.max_attempts``);
a body cut off while it streams (past botocore's retries, which end with the reply's headers)
is read again by ``read_body``, as many times.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path


_clients: dict = {}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")


def s3_client(settings):
    """One boto3 S3 client per process and storage settings (clients are thread-safe, not fork-safe).
    ``storage.max_attempts`` counts every attempt, the first included: botocore's
    ``total_max_attempts`` (its ``max_attempts`` counts retries only)."""
    key = (os.getpid(), settings.endpoint_url, settings.region, settings.max_attempts)
    if key not in _clients:
        import boto3
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
                        connect_timeout=settings.timeout_s, read_timeout=settings.timeout_s)
        _clients[key] = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url,
                                                       region_name=settings.region, config=config)
    return _clients[key]


def read_body(get, attempts: int) -> tuple[bytes, dict]:
    """(body, reply) of a GET, ``get()`` made again when the connection breaks while the body
    streams (a reset, a short body: botocore checks the length), up to ``attempts`` GETs in all
    with botocore's backoff (full jitter, doubling from 0.1 s)."""
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    for attempt in range(1, attempts + 1):
        reply = get()
        try:
            return reply["Body"].read(), reply
        except (BotoCoreError, HTTPError, OSError):
            if attempt >= attempts:
                raise
            time.sleep(random.random() * min(20.0, 0.1 * 2 ** attempt))
    raise AssertionError("unreachable")


class S3Reader(io.RawIOBase):
    """A read-only, seekable file over one S3 object, read with ranged GETs in ``block`` pieces
    (what the decoder asks for next is usually in the block already fetched)."""

    def __init__(self, client, bucket: str, key: str, size: int, block: int = 4 << 20, attempts: int = 8):
        super().__init__()
        self._c, self._bucket, self._key, self.size, self._block = client, bucket, key, size, block
        self._attempts = attempts
        self._pos, self._buf_start, self._buf = 0, 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        if self._pos >= self.size:
            return 0
        end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos < end):
            last = min(self.size, self._pos + max(self._block, len(b))) - 1
            self._buf, _ = read_body(lambda: self._c.get_object(Bucket=self._bucket, Key=self._key,
                                                                Range=f"bytes={self._pos}-{last}"), self._attempts)
            self._buf_start = self._pos
            end = self._buf_start + len(self._buf)
            if not self._buf:
                return 0
        n = min(len(b), end - self._pos)
        off = self._pos - self._buf_start
        b[:n] = self._buf[off:off + n]
        self._pos += n
        return n


def input_size(uri: str, settings) -> int | None:
    """Bytes of an input (None when it does not exist; -1 when it exists but is not a file)."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return int(s3_client(settings).head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
    if not os.path.exists(uri):
        return None
    return os.path.getsize(uri) if os.path.isfile(uri) else -1


def open_input(uri: str, settings, size: int | None = None):
    """What the decoder opens: the path of a local file, or a seekable reader over an S3 object."""
    if not is_s3(uri):
        return uri
    bucket, key = split_s3(uri)
    if size is None:
        size = input_size(uri, settings)
    return S3Reader(s3_client(settings), bucket, key, size, attempts=settings.max_attempts)


def read_input_bytes(uri: str, settings) -> bytes:
    """The whole of a small input (a manifest, a subtitle file)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(settings)
        return read_body(lambda: client.get_object(Bucket=bucket, Key=key), settings.max_attempts)[0]
    return Path(uri).read_bytes()
