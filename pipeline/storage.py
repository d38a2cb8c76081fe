"""Storage: the output, in a local directory or an S3 (or S3-compatible) bucket, behind one
small interface (reading inputs is stages.inputs, beneath the stages that open them).

Keys are ``/``-separated paths relative to a store's root. Every write is staged and committed
atomically: a temporary file, fsync and rename on local disk; a single PUT (its ETag checked
against the MD5 of the bytes) or a multipart upload whose completion response is checked on S3,
aborted when anything fails. Readers never see a partial object.

S3 goes through boto3 with its standard credential chain (environment, shared files, instance
or pod roles). Credentials are never read, logged or stored by vidcurate; the job spec holds only
``storage.endpoint_url`` and friends. botocore's ``standard`` retry mode retries throttling and
transient errors with exponential backoff (``storage.max_attempts`` attempts in all); a body cut
off while it streams is read again as often (stages.inputs.read_body).

Conditional writes, for the output's lease (pipeline.lock): ``read_version`` gives an object
with its version, ``write_if`` writes only if the object is absent (version None) or still at
the version read, ``delete_if`` deletes only that version. On S3 they are ``If-None-Match: *``
and ``If-Match`` on the ETag; on a file system, a compare and replace (or an exclusive link)
under an exclusive file lock beside the object, ``<key>.mutex``, never deleted.
``conditional_writes`` says why a store cannot do them (None when it can).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from pathlib import Path

from stages.inputs import (S3Reader, input_size, is_s3, open_input, read_body, read_input_bytes, s3_client,
                           split_s3)

__all__ = ["S3Reader", "input_size", "is_s3", "open_input", "read_input_bytes", "s3_client", "split_s3",
           "open_store", "LocalStore", "S3Store", "MUTEX_SUFFIX"]

MUTEX_SUFFIX = ".mutex"  # a local store's file lock for the conditional writes of a key

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
    """A directory. Temporary files end in ``.tmp`` next to their target, one per writer (two
    writers of one key, as a retried task beside its first attempt, never share one). Committed
    files get the mode the umask gives, as any file the user writes."""

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
        tmp = _staging(path)
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
        tmp = _staging(path)
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

    # --- conditional writes (the output's lease) --------------------------------------------

    def read_version(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version) of a file (its version: the sha256 of its bytes), None when absent."""
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """Write ``data`` if the file is absent (``version`` None) or still at ``version``;
        returns the new version, or None when the condition does not hold. The check and the
        write are one step for every ``write_if`` and ``delete_if`` on the key, in any process
        on any host that shares the file system's locks; a creation is an exclusive link, which
        fails whoever made the name."""
        path = self.root / key
        with self._exclusive(path):
            held = self.read_version(key)
            if (held[1] if held else None) != version:
                return None
            tmp = _staging(path)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                if version is None:
                    os.link(tmp, path)
                else:
                    os.replace(tmp, path)
            except FileExistsError:
                return None
            finally:
                tmp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def delete_if(self, key: str, version: str) -> bool:
        """Delete the file if it is still at ``version``; True when deleted."""
        path = self.root / key
        with self._exclusive(path):
            held = self.read_version(key)
            if held is None or held[1] != version:
                return False
            path.unlink()
        return True

    def conditional_writes(self, key: str) -> str | None:
        """None when ``write_if`` is atomic here (file locks and hard links work), else why not."""
        path = self.root / key
        probe = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.probe.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._exclusive(path):
                probe.write_bytes(b"")
                os.link(probe, f"{probe}.link")
                os.unlink(f"{probe}.link")
        except OSError as err:
            return f"{self.root} takes no exclusive file lock or hard link ({err.strerror or err})"
        finally:
            probe.unlink(missing_ok=True)
        return None

    @contextlib.contextmanager
    def _exclusive(self, path: Path):
        """Hold ``<path>.mutex`` exclusively: flock(2) against other processes and hosts (where
        the file system shares locks, as local disks and NFS do), a threading lock against
        threads of this process (on NFS, flock is per process)."""
        import fcntl

        mutex = path.with_name(path.name + MUTEX_SUFFIX)
        with _thread_lock(str(mutex)):
            mutex.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(mutex, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies, as to any file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock


def _staging(path: Path) -> Path:
    """A temporary name beside ``path`` of this writer alone (process and thread)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(name: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(name, threading.Lock())


_conditional_support: dict[tuple, str | None] = {}  # (endpoint, bucket) -> S3Store.conditional_writes


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
        return read_body(lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)),
                         self.settings.max_attempts)[0]

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
            try:
                c.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload)
            except Exception:  # the store is failing: the next run's remove_orphans aborts it
                pass
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

    # --- conditional writes (the output's lease) --------------------------------------------

    def read_version(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of an object, None when absent."""
        from botocore.exceptions import ClientError

        try:
            data, reply = read_body(lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)),
                                    self.settings.max_attempts)
        except ClientError as err:
            if _missing(err):
                return None
            raise
        return data, reply["ETag"]

    def write_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """PUT ``data`` with ``If-None-Match: *`` (``version`` None) or ``If-Match: version``;
        returns the new ETag, or None when the store answers that the condition does not hold
        (412, or 409 for a concurrent conditional write). A PUT retried after its first try
        landed also answers 412: the caller reads the object to tell."""
        from botocore.exceptions import ClientError

        md5 = hashlib.md5(data)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                           ContentMD5=_b64(md5.digest()), **condition)
        except ClientError as err:
            if _status(err) in (409, 412) or (version is not None and _missing(err)):
                return None
            raise
        if reply.get("ETag", "").strip('"') != md5.hexdigest():
            raise IOError(f"S3 PUT of {self.uri(key)} answered ETag {reply.get('ETag')!r}, expected the MD5 of the bytes")
        return reply["ETag"]

    def delete_if(self, key: str, version: str) -> bool:
        """DELETE with ``If-Match: version``; True when deleted. A store that does not take the
        condition on a DELETE gets a read, a check and a plain DELETE."""
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=version)
            return True
        except ClientError as err:
            if _status(err) in (409, 412) or _missing(err):
                return False
            if _status(err) not in (400, 501):
                raise
        held = self.read_version(key)
        if held is None or held[1] != version:
            return False
        self.delete(key)
        return True

    def conditional_writes(self, key: str) -> str | None:
        """None when the store honours ``If-None-Match: *`` and ``If-Match`` on PUT, else why not.
        Probed once per process and bucket on an object of its own beside ``key`` (removed after;
        its name ends in .tmp, as ``vidcurate gc`` expects of leftovers): two PUTs whose condition
        is false must both answer 412 Precondition Failed (a store that ignores a condition
        overwrites)."""
        import uuid

        from botocore.exceptions import ClientError

        cache = (self.settings.endpoint_url, self.bucket)
        if cache in _conditional_support:
            return _conditional_support[cache]
        where = self.settings.endpoint_url or "S3"
        c, k = self.client, self._key(f"{key}.{uuid.uuid4().hex}.probe.tmp")
        why = None
        c.put_object(Bucket=self.bucket, Key=k, Body=b"probe")
        try:
            for header, condition in (("If-None-Match: *", {"IfNoneMatch": "*"}),
                                      ("If-Match", {"IfMatch": '"' + "0" * 32 + '"'})):
                try:
                    c.put_object(Bucket=self.bucket, Key=k, Body=b"probe", **condition)
                except ClientError as err:
                    if _status(err) == 412:
                        continue
                    why = (f"{where} refuses a PUT with {header} "
                           f"({err.response.get('Error', {}).get('Code')}, HTTP {_status(err)})")
                    break
                why = f"{where} ignores {header} on PUT (it overwrote an object the condition protects)"
                break
        finally:
            c.delete_object(Bucket=self.bucket, Key=k)
        _conditional_support[cache] = why
        return why


def _status(err) -> int | None:
    return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _missing(err) -> bool:
    return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode()


