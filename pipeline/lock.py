"""One run per output at a time: a lease in ``_work/lock.json``, taken and renewed by
conditional writes.

The lease names its holder (host, pid, when it started, a random token). It is created only if
there is none (S3: ``If-None-Match: *``; a file system: an exclusive link under a file lock),
taken over from a stale holder only if it is still the lease that was judged stale (S3:
``If-Match`` on its ETag; a file system: compare and replace under the file lock), and renewed
every ``RENEW_S`` seconds by the same compare-and-swap, so no write of one run ever replaces
another's lease. Of runs starting together exactly one takes it; the others stop before
changing anything, naming the holder (a SpecError). A lease is stale when its holder was on
this host and is gone, or was not renewed for ``STALE_S`` seconds (a driver lost with its node).

A run that loses its lease stops before its next commit: the renewal thread notes a lease that
is no longer its own, and ``check()``, which the driver calls before partition writers start,
before each batch of deletions and before the manifest, raises LeaseLost naming the holder (the
command line exits 4). A holder that could not renew for ``STALE_S - 2 * RENEW_S`` seconds stops
the same way, before anyone may judge its lease stale. What it committed (per-video results,
partition records) is content-addressed: valid work for the holder to reuse.

A store that cannot write conditionally (checked at start, ``storage.conditional_writes``):
``require`` refuses it; ``warn`` runs with a warning, writing the lease and reading it back,
which two runs starting together can both pass.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from pipeline.spec import SpecError
from pipeline.storage import MUTEX_SUFFIX

KEY = "_work/lock.json"
KEYS = frozenset({KEY, KEY + MUTEX_SUFFIX})  # the lease's own files: a run's clean-up leaves them
RENEW_S = 30.0
STALE_S = 300.0


class LeaseLost(RuntimeError):
    """This run no longer holds its output's lease; the message names the run that does."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_reason(lease: dict, now: float | None = None, stale_s: float | None = None) -> str | None:
    """Why a lease no longer holds (None: it holds)."""
    now = time.time() if now is None else now
    stale_s = STALE_S if stale_s is None else stale_s
    if lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1))):
        return f"its driver (pid {lease.get('pid')}) is gone"
    if now - float(lease.get("renewed", 0)) > stale_s:
        return f"it was last renewed {now - float(lease.get('renewed', 0)):.0f}s ago"
    return None


def holder(lease: dict | None) -> str:
    """Who holds a lease, for messages: ``pid 123 on host, started 2026-01-02T03:04:05Z``."""
    if not lease:
        return "none: the lease is gone"
    started = lease.get("started")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(started))) if started else "at an unknown time"
    return f"pid {lease.get('pid')} on {lease.get('host')}, started {when}"


def _line_up() -> None:
    """Race testing: with VIDCURATE_LEASE_AT=<epoch seconds>, wait until then before taking the
    lease, so that runs a test started reach this point together. Unset (always, outside
    tests): nothing."""
    at = os.environ.get("VIDCURATE_LEASE_AT")
    if at:
        time.sleep(max(0.0, float(at) - time.time()))


class OutputLock:
    """``with OutputLock(store, log) as lease:`` holds the output's lease for the run;
    ``lease.check()`` before each commit."""

    def __init__(self, store, log=print, *, conditional_writes: str = "require", renew_s: float | None = None,
                 stale_s: float | None = None):
        self.store, self.log, self.mode = store, log, conditional_writes
        self.renew_s = RENEW_S if renew_s is None else renew_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        if self.stale_s <= 2 * self.renew_s:
            raise ValueError(f"a lease renewed every {self.renew_s}s must last longer than {2 * self.renew_s}s")
        self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.atomic = True
        self.version: str | None = None  # of the lease as this run last wrote it (ETag, digest)
        self.renewed = self.verified = 0.0
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = None

    # --- the lease in the store ---------------------------------------------------------------

    def _read(self) -> tuple[dict | None, str] | None:
        """(lease, version) as stored (the lease None when it is not a lease), None when absent."""
        got = self.store.read_version(KEY)
        if got is None:
            return None
        try:
            lease = json.loads(got[0])
        except ValueError:
            lease = None
        return (lease if isinstance(lease, dict) else None), got[1]

    def _ours(self, got) -> bool:
        return got is not None and (got[0] or {}).get("token") == self.lease["token"]

    def _put(self, version: str | None) -> bool:
        """Write the lease, renewed now, over ``version`` (None: where there is none); True when
        this run holds it after."""
        now = time.time()
        data = json.dumps({**self.lease, "renewed": now}, sort_keys=True).encode()
        if self.atomic:
            new = self.store.write_if(KEY, data, version)
        else:  # no conditional writes: check, write, read back (two runs can interleave)
            held = self.store.read_version(KEY)
            new = None
            if (held[1] if held else None) == version:
                self.store.write(KEY, data)
                back = self.store.read_version(KEY)
                new = back[1] if back is not None and back[0] == data else None
        if new is None:
            # a retried request whose first try landed finds its own condition false: the lease
            # may be ours all the same (no other run writes our token)
            got = self._read()
            if not self._ours(got):
                return False
            new, now = got[1], float(got[0].get("renewed", now))
        self.version, self.renewed = new, now
        return True

    # --- taking, keeping, checking and leaving it --------------------------------------------

    def acquire(self) -> None:
        why_not = self.store.conditional_writes(KEY)
        if why_not:
            if self.mode != "warn":
                raise SpecError(f"storage.conditional_writes: {why_not}, so the lease of {self.store.uri()} cannot "
                                "keep a second run out. Set storage.conditional_writes=warn to run there anyway, "
                                "taking care that one run at a time writes the output")
            self.log(f"vidcurate: WARNING: {why_not}; two runs started together on {self.store.uri()} could both "
                     "take its lease (storage.conditional_writes=warn)")
            self.atomic = False
        _line_up()
        self.lease["started"] = time.time()
        for _ in range(16):  # another turn only when the lease changed between our read and our write
            got = self._read()
            if got is None:
                if self._put(None):
                    break
                continue
            held, version = got
            why = "its lease is unreadable" if held is None else stale_reason(held, stale_s=self.stale_s)
            if why is None:
                raise SpecError(f"output.uri: another vidcurate run ({holder(held)}) is writing to "
                                f"{self.store.uri()}; wait for it to end. If it is gone, delete {self.store.uri(KEY)} "
                                f"(its lease expires {self.stale_s:.0f}s after its last renewal)")
            self.log(f"vidcurate: taking over the output from an interrupted run ({why})")
            if self._put(version):
                break
        else:
            raise SpecError(f"output.uri: the lease of {self.store.uri()} kept changing while this run tried to "
                            "take it; other runs are starting there")
        self.verified = time.time()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="vidcurate-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if not self._put(self.version):
                    got = self._read()
                    self._lose(got[0] if got else None)
                    return
            except Exception as err:  # retried at the next turn; the lease lasts STALE_S
                self.log(f"vidcurate: renewing the output lease failed ({err}); retrying in {self.renew_s:.0f}s")

    def _lose(self, other: dict | None) -> LeaseLost:
        if self.lost is None:
            what = (f"{self.store.uri()} was taken by another vidcurate run ({holder(other)})" if other else
                    f"this run's lease {self.store.uri(KEY)} was deleted")
            self.lost = LeaseLost(f"output.uri: {what}; this run stopped before committing anything further, and "
                                  "what it committed stays for the next run to reuse")
            self.log(f"vidcurate: {self.lost}")
        return self.lost

    def check(self, max_age_s: float = 0.0) -> None:
        """Raise LeaseLost unless this run still holds the lease: what the renewals found, how
        long ago the last one succeeded, and a read of the lease (unless one in the last
        ``max_age_s`` seconds found it ours)."""
        if self.lost is not None:
            raise self.lost
        now = time.time()
        if now - self.renewed > self.stale_s - 2 * self.renew_s:
            self.lost = LeaseLost(f"output.uri: the lease of {self.store.uri()} was last renewed "
                                  f"{now - self.renewed:.0f}s ago; another run may take it over after "
                                  f"{self.stale_s:.0f}s, so this run stopped before committing anything further")
            raise self.lost
        if now - self.verified >= max_age_s:
            got = self._read()
            if not self._ours(got):
                raise self._lose(got[0] if got else None)
            self.verified = now

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.version is None:
            return
        try:  # the run's own error, if any, is the one to see: a lease left behind only expires
            got = self._read()
            if self._ours(got):
                if self.atomic:
                    self.store.delete_if(KEY, got[1])
                else:
                    self.store.delete(KEY)
        except Exception as err:
            self.log(f"vidcurate: could not remove the output lease {self.store.uri(KEY)} ({err}); "
                     f"it expires {self.stale_s:.0f}s after its last renewal")

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
