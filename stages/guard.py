"""Guarded execution of decoder work: a child process with a wall-clock watchdog and a memory cap.

A hostile file can hang the demuxer, exhaust memory, or crash FFmpeg with a segfault. Running
the decode in a child process turns each of those into a reason on one ``videos`` row
(``timeout``, ``memory_limit``, ``decoder_crash``) while the Ray task that asked survives, so
Ray never retries a poisoned video forever.

Children come from a ``forkserver`` that has already imported the decoding modules; the
server lives as long as the Ray worker process and serves every task that worker runs. One
child then serves call after call (no fork, and none of a fresh process's first-call costs;
with the preloading, a 4-second video's analyze stage went from about 300 ms to about 100 ms,
bench/RESULTS.md). It is replaced after a call that did not end
cleanly, and whatever fails in a child that served earlier calls is run again in a child of
its own, whose verdict counts: a reason never depends on what an earlier file left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback

# Imported once by the forkserver, so a guarded call never pays for them (numpy.ma: numpy's
# median imports it on first use; the modules the analysis imports lazily).
_PRELOAD = ["numpy", "numpy.ma", "cv2", "av", "av.subtitles", "scenedetect", "stages.analyze", "stages.decode",
            "stages.marks", "stages.subtitles", "stages.extract"]
_ctx = None


def _modules_of(values) -> list[str]:
    """The modules defining the classes of ``values`` (and of their fields, one level down):
    unpickling them in a child would import them there, on every call (a settings object's
    module imports its validation library: about 0.13 s a call)."""
    found = []
    for v in values:
        for obj in (v, *getattr(v, "__dict__", {}).values()):
            module = type(obj).__module__
            if module not in ("builtins", "__main__") and module not in found:
                found.append(module)
    return found


def _context(args: tuple = ()):
    """The forkserver context; started on first use, preloading the decoding modules and those
    of the first call's arguments."""
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(_PRELOAD + [m for m in _modules_of(args) if m not in _PRELOAD])
    return _ctx


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _die_with_parent() -> None:
    """SIGKILL this child if its parent (the forkserver, which exits with the Ray worker) dies,
    so a hung decoder cannot outlive a killed worker."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog still applies while the parent lives
        pass


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return "Insufficient memory" in text or "Failed to allocate" in text or "failed to map" in text


def _limit(memory_mb) -> None:
    import resource

    if memory_mb:  # a budget on top of what the process already maps (libraries, thread stacks)
        limit = _address_space_bytes() + int(memory_mb * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _outcome(fn, args, memory_mb) -> tuple[str, object]:
    """(status, payload) of one call in the child: ok and the value, or why not."""
    try:
        value = fn(*args)
        failed = isinstance(value, dict) and (value.get("status") != "ok" or value.get("suspect"))
        message = str(value.get("message") or "") if failed else ""
        if memory_mb and failed and "[Errno 11]" in message:
            # FFmpeg cannot start its decoding threads (EAGAIN) once the address space is used up
            return "memory_limit", f"the decoder hit its memory budget of {memory_mb} MB: {message}"
        return "ok", value
    except MemoryError as err:
        return "memory_limit", f"the decoder ran out of its memory budget of {memory_mb} MB ({err})"
    except BaseException as err:  # reported to the parent, which decides the row
        # lazy imports that cannot map their library, OpenCV's allocation errors: the budget
        kind = "memory_limit" if memory_mb and _is_oom(err) else "exception"
        return kind, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"


def _send(conn, result) -> None:
    try:
        conn.send(result)
    except MemoryError:
        conn.send(("memory_limit", "result too large for the memory limit"))
    except Exception as err:  # e.g. an unpicklable result: a bug, reported as such
        conn.send(("exception", f"cannot return the result: {type(err).__name__}: {err}"))


def _child(conn, fn, args, memory_mb):
    _die_with_parent()
    _limit(memory_mb)
    try:
        _send(conn, _outcome(fn, args, memory_mb))
    finally:
        conn.close()


def _serve(conn, memory_mb):
    """A reusable child: after its memory budget is set, it says how much address space it maps,
    then runs call after call ((fn, args) in, (status, payload) out) until told to stop."""
    _die_with_parent()
    _limit(memory_mb)
    conn.send(("ready", _address_space_bytes()))
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):
            return
        if call is None:
            return
        _send(conn, _outcome(*call, memory_mb))


@contextlib.contextmanager
def _main_hidden():
    """Start children without re-running the parent's ``__main__`` in them.

    multiprocessing re-imports the main script in every child (as ``__mp_main__``); inside a
    Ray worker that is Ray's worker script, about 0.4 s of imports per call. Guarded functions
    always live in importable modules, so children never need the main module.
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    for k in saved:
        delattr(main, k) if k == "__file__" else setattr(main, k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class GuardFailure(Exception):
    """The guarded call did not return: ``reason`` is timeout, memory_limit or decoder_crash."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _start(ctx, target, args: tuple, parent):
    """A started child process; GuardFailure (with ``parent`` closed) when it cannot start."""
    proc = ctx.Process(target=target, args=args, daemon=True)
    try:
        with _main_hidden():
            proc.start()
    except Exception as err:  # out of descriptors, an argument that cannot be pickled, ...
        parent.close()
        raise GuardFailure("exception", f"cannot start the guarded process: {type(err).__name__}: {err}") from None
    return proc


def _await(proc, conn, timeout_s: float):
    """The child's next (status, payload), or None when it died without sending one; raises
    GuardFailure("timeout") after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GuardFailure("timeout", f"no result after {timeout_s:g}s; decoder process killed")
        if conn.poll(min(left, 0.5)):
            try:
                return conn.recv()
            except (EOFError, OSError):
                return None
        if not proc.is_alive() and not conn.poll(0):
            return None


def _death(proc) -> GuardFailure:
    """Why a child ended without a result (its exit code or signal)."""
    proc.join(5)
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # real-time signals have no name
            name = f"signal {-code}"
        if -code == signal.SIGKILL:  # the kernel's OOM killer, or another hard kill
            return GuardFailure("memory_limit", f"decoder process killed ({name})")
        return GuardFailure("decoder_crash", f"decoder process died with {name}")
    return GuardFailure("decoder_crash", f"decoder process exited with code {code} and no result")


def _kill(proc) -> None:
    if proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended on its own meanwhile
            pass
        proc.join(5)


def _result(got, proc):
    """The value of a (status, payload), or the GuardFailure it stands for."""
    if got is None:
        raise _death(proc)
    status, payload = got
    if status == "ok":
        return payload
    if status in ("memory_limit", "exception"):
        raise GuardFailure(status, payload)
    raise _death(proc)


def _once(fn, args: tuple, timeout_s: float, memory_mb):
    """``fn(*args)`` in a child of its own."""
    ctx = _context(args)
    parent, child = ctx.Pipe(duplex=False)
    try:
        proc = _start(ctx, _child, (child, fn, args, memory_mb), parent)
    finally:
        child.close()
    try:
        return _result(_await(proc, parent, timeout_s), proc)
    finally:
        _kill(proc)
        parent.close()


class _Server:
    """A guarded child reused call after call (no fork, no warm-up per call). It is replaced
    after ``MAX_CALLS`` calls, once its address space grew by a quarter of its memory budget
    (so every call keeps most of the budget), and after any call that did not end cleanly."""

    MAX_CALLS = 256
    GROWTH = 0.25

    def __init__(self, args: tuple, memory_mb):
        ctx = _context(args)
        self.conn, child = ctx.Pipe(duplex=True)
        try:
            self.proc = _start(ctx, _serve, (child, memory_mb), self.conn)
        finally:
            child.close()
        self.memory_mb, self.calls = memory_mb, 0
        try:
            got = _await(self.proc, self.conn, 60.0)
        except GuardFailure:
            got = None
        if not got or got[0] != "ready":
            self.close()
            raise GuardFailure("exception", "the guarded process did not start")
        self.baseline = got[1]

    def worn(self) -> bool:
        if self.calls >= self.MAX_CALLS or not self.proc.is_alive():
            return True
        if not self.memory_mb:
            return False
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return True
        return mapped - self.baseline > self.GROWTH * self.memory_mb * 1024 * 1024

    def call(self, fn, args: tuple, timeout_s: float):
        """(status, payload) of one call, or None when the child died; the child is closed
        unless the call came back."""
        self.calls += 1
        try:
            self.conn.send((fn, args))
            got = _await(self.proc, self.conn, timeout_s)
        except GuardFailure:
            self.close()
            raise
        except Exception as err:  # an argument that cannot be pickled, a broken pipe
            self.close()
            raise GuardFailure("exception", f"cannot reach the guarded process: {type(err).__name__}: {err}") from None
        if got is None:
            failure = _death(self.proc)
            self.close()
            raise failure
        return got

    def close(self) -> None:
        try:
            self.conn.send(None)
        except Exception:  # it is gone already
            pass
        _kill(self.proc)
        self.conn.close()


_server: _Server | None = None
_server_lock = threading.Lock()


def _clean(status: str, payload) -> bool:
    return status == "ok" and not (isinstance(payload, dict) and (payload.get("status") != "ok"
                                                                  or payload.get("suspect")))


def _reused(fn, args: tuple, timeout_s: float, memory_mb):
    """``fn(*args)`` in the reusable child. Whatever fails there after it served other calls is
    run again in a child of its own, which decides: a verdict never depends on an earlier file."""
    global _server
    if _server is not None and (_server.memory_mb != memory_mb or _server.worn()):
        _server.close()
        _server = None
    if _server is None:
        _server = _Server(args, memory_mb)
    server, fresh = _server, _server.calls == 0
    try:
        status, payload = server.call(fn, args, timeout_s)
    except GuardFailure as fail:
        _server = None
        if fresh or fail.reason == "timeout":
            raise
        return _once(fn, args, timeout_s, memory_mb)
    if _clean(status, payload):
        return payload
    server.close()  # it met a bad file: the next call gets a new child
    _server = None
    if fresh or status == "ok":
        return _result((status, payload), server.proc)
    return _once(fn, args, timeout_s, memory_mb)


def run_guarded(fn, args: tuple, *, timeout_s: float, memory_mb: float | None, reuse: bool = True):
    """Run ``fn(*args)`` in a child process; return its result or raise GuardFailure.

    Exceptions raised by ``fn`` come back as GuardFailure("exception", message) unless ``fn``
    turns them into results itself. A dict result that failed (``status`` not "ok", or marked
    ``suspect``) because FFmpeg could not start threads under the limit is memory_limit.
    With ``reuse`` (and no other thread of this process in a guarded call), the child is one
    that lives on between calls (_Server); else a child of its own.
    """
    if reuse and _server_lock.acquire(blocking=False):
        try:
            return _reused(fn, args, timeout_s, memory_mb)
        finally:
            _server_lock.release()
    return _once(fn, args, timeout_s, memory_mb)
