"""One run per output at a time: a lease in ``_work/lock.json``, renewed while the run lives.

Two drivers writing one output would delete each other's manifest and race on shards. The
lease names its holder (host, pid, a random token) and is renewed every ``RENEW_S`` seconds. A
new run refuses an output whose lease is alive, and takes over one that is stale: its holder
was on this host and is gone, or it was not renewed for ``STALE_S`` seconds (a driver lost with
its node). Taking a lease is a write followed by a read-back of the token, so of two runs
starting together one sees the other's token and stops.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from pipeline.spec import SpecError

KEY = "_work/lock.json"
RENEW_S = 30.0
STALE_S = 300.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_reason(lease: dict, now: float | None = None) -> str | None:
    """Why a lease no longer holds (None: it holds)."""
    now = time.time() if now is None else now
    if lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1))):
        return f"its driver (pid {lease.get('pid')}) is gone"
    if now - float(lease.get("renewed", 0)) > STALE_S:
        return f"it was last renewed {now - float(lease.get('renewed', 0)):.0f}s ago"
    return None


class OutputLock:
    """``with OutputLock(store, log):`` holds the output's lease for the run."""

    def __init__(self, store, log=print):
        self.store, self.log = store, log
        self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.store.read(KEY))
        except Exception:
            return None

    def _write(self) -> None:
        self.lease["renewed"] = time.time()
        self.store.write(KEY, json.dumps(self.lease, sort_keys=True).encode())

    def acquire(self) -> None:
        held = self._read() if self.store.exists(KEY) else None
        if held is not None:
            why = stale_reason(held)
            if why is None:
                raise SpecError(f"output.uri: another vidcurate run (pid {held.get('pid')} on {held.get('host')}) "
                                f"is writing to {self.store.uri()}; wait for it to end. If it is gone, delete "
                                f"{self.store.uri(KEY)} (its lease expires {STALE_S:.0f}s after its last renewal)")
            self.log(f"vidcurate: taking over the output from an interrupted run ({why})")
        self.lease["started"] = time.time()
        self._write()
        if (self._read() or {}).get("token") != self.lease["token"]:
            raise SpecError(f"output.uri: another vidcurate run took {self.store.uri()} at the same moment")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="vidcurate-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if (self._read() or {}).get("token") != self.lease["token"]:
                    self.log("vidcurate: WARNING: the output's lease was taken by another run")
                    return
                self._write()
            except Exception as err:  # a failed renewal is retried; the lease lasts STALE_S
                self.log(f"vidcurate: renewing the output lease failed ({err}); retrying")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self._read() or {}).get("token") == self.lease["token"]:
            self.store.delete(KEY)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
