"""Storage: the output, in a local directory or an S3 (or S3-compatible) bucket, behind one
small interface (reading inputs is stages.inputs, beneath the stages that open them).

Keys are ``/``-separated paths relative to a store's root. Every write is staged and committed
atomically: a temporary file, fsync and rename on local disk; a single PUT (its ETag checked
against the MD5 of the bytes) or a multipart upload whose completion response is checked on S3,
aborted when anything fails. Readers never see a partial object.

S3 goes through boto3 with its standard credential chain (environment, shared files, instance
or pod roles). Credentials are never read, logged or stored by vidcurate; the job spec holds only
``storage.endpoint_url`` and friends. botocore's ``standard`` retry mode retries throttling and
transient errors with exponential backoff (``storage.max_attempts`` attempts in all).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from stages.inputs import S3Reader, input_size, is_s3, open_input, read_input_bytes, s3_client, split_s3

__all__ = ["S3Reader", "input_size", "is_s3", "open_input", "read_input_bytes", "s3_client", "split_s3",
           "open_store", "LocalStore", "S3Store"]

def open_store(uri: str, settings):
    """The store rooted at ``uri`` (a local path, file:// URI or s3://bucket/prefix)."""
    if is_s3(uri):
        return S3Store(uri, settings)
    return LocalStore(uri[len("file://"):] if uri.startswith("file://") else uri)


def file_mode() -> int:
    """The mode the process's umask gives a new file (0o644 under umask 022): committed files
    get it whatever made their staging file (``tempfile.mkstemp`` makes 0o600)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(umask)
    return 0o666 & ~umask


class LocalStore:
    """A directory. Temporary files end in ``.tmp`` next to their target. Committed files get
    the mode the umask gives, as any file the user writes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def write_file(self, key: str, local: str | Path) -> None:
        """Commit a finished local file (moved when on the same filesystem, else copied)."""
        import shutil

        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            os.replace(local, tmp)
        except OSError:
            shutil.copyfile(local, tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        """(key, size) of every file under ``prefix``, sorted."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted((p.relative_to(self.root).as_posix(), p.stat().st_size) for p in base.rglob("*") if p.is_file())

    def top(self) -> tuple[dict[str, int], set[str]]:
        """The files directly in the root (name -> size) and the folders there."""
        if not self.root.is_dir():
            return {}, set()
        entries = list(self.root.iterdir())
        return ({p.name: p.stat().st_size for p in entries if p.is_file()}, {p.name for p in entries if p.is_dir()})

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def clean_orphans(self, prefix: str = "") -> int:
        """Delete temporary files a crashed writer left under ``prefix``; returns how many."""
        orphans = [k for k, _ in self.list(prefix) if k.endswith(".tmp")]
        for k in orphans:
            self.delete(k)
        return len(orphans)


class S3Store:
    """A bucket prefix on S3 or an S3-compatible store (``storage.endpoint_url``)."""

    def __init__(self, uri: str, settings):
        self.bucket, self.prefix = split_s3(uri)
        self.settings = settings

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    @property
    def client(self):
        return s3_client(self.settings)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key else f"s3://{self.bucket}/{self.prefix}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        if len(data) >= self.settings.multipart_threshold_mb * 2**20:
            return self._multipart(key, io.BytesIO(data))
        md5 = hashlib.md5(data)
        reply = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                       ContentMD5=_b64(md5.digest()))
        if reply.get("ETag", "").strip('"') != md5.hexdigest():
            raise IOError(f"S3 PUT of {self.uri(key)} answered ETag {reply.get('ETag')!r}, expected the MD5 of the bytes")

    def write_file(self, key: str, local: str | Path) -> None:
        size = os.path.getsize(local)
        if size < self.settings.multipart_threshold_mb * 2**20:
            self.write(key, Path(local).read_bytes())
        else:
            with open(local, "rb") as f:
                self._multipart(key, f)
        os.unlink(local)

    def _multipart(self, key: str, f) -> None:
        """Multipart upload of a file object; the object appears only when completion succeeds."""
        c, k = self.client, self._key(key)
        upload = c.create_multipart_upload(Bucket=self.bucket, Key=k)["UploadId"]
        try:
            parts, n = [], 1
            while chunk := f.read(self.settings.part_size_mb * 2**20):
                md5 = hashlib.md5(chunk)
                etag = c.upload_part(Bucket=self.bucket, Key=k, UploadId=upload, PartNumber=n, Body=chunk,
                                     ContentMD5=_b64(md5.digest()))["ETag"]
                if etag.strip('"') != md5.hexdigest():
                    raise IOError(f"S3 part {n} of {self.uri(key)} answered ETag {etag!r}")
                parts.append({"PartNumber": n, "ETag": etag})
                n += 1
            reply = c.complete_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload,
                                                MultipartUpload={"Parts": parts})
            if not reply.get("ETag"):  # S3 can answer 200 with an error body; botocore raises, but check
                raise IOError(f"S3 did not complete the upload of {self.uri(key)}: {reply}")
        except BaseException:
            c.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload)
            raise

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (all pages), sorted."""
        full = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out.extend((o["Key"][cut:], o["Size"]) for o in page.get("Contents", []))
        return sorted(out)

    def top(self) -> tuple[dict[str, int], set[str]]:
        """The objects directly under the prefix (name -> size) and the "folders" there."""
        full = self._key("")
        full = full if not full or full.endswith("/") else full + "/"
        files, folders = {}, set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full,
                                                                          Delimiter="/"):
            files.update((o["Key"][len(full):], o["Size"]) for o in page.get("Contents", []))
            folders.update(p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return files, folders

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def clean_orphans(self, prefix: str = "") -> int:
        """Abort multipart uploads a crashed writer left under ``prefix``; returns how many."""
        n = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self._key(prefix))
        for page in pages:
            for up in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
        return n


def _b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode()


