"""Guarded execution of decoder work: a child process with a wall-clock watchdog and a memory cap.

A hostile file can hang the demuxer, exhaust memory, or crash FFmpeg with a segfault. Running
the decode in a child process turns each of those into a reason on one ``videos`` row
(``timeout``, ``memory_limit``, ``decoder_crash``) while the Ray task that asked survives, so
Ray never retries a poisoned video forever.

Children come from a ``forkserver`` that has already imported the decoding modules, so each
guarded call costs a fork (milliseconds), not a Python start-up; the server lives as long as
the Ray worker process and serves every task that worker runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
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


def _child(conn, fn, args, memory_mb):
    import resource

    _die_with_parent()

    if memory_mb:  # a budget on top of what the process already maps (libraries, thread stacks)
        limit = _address_space_bytes() + int(memory_mb * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        value = fn(*args)
        result = ("ok", value)
        failed = isinstance(value, dict) and (value.get("status") != "ok" or value.get("suspect"))
        message = str(value.get("message") or "") if failed else ""
        if memory_mb and failed and "[Errno 11]" in message:
            # FFmpeg cannot start its decoding threads (EAGAIN) once the address space is used up
            result = ("memory_limit", f"the decoder hit its memory budget of {memory_mb} MB: {message}")
    except MemoryError as err:
        result = ("memory_limit", f"the decoder ran out of its memory budget of {memory_mb} MB ({err})")
    except BaseException as err:  # reported to the parent, which decides the row
        # lazy imports that cannot map their library, OpenCV's allocation errors: the budget
        kind = "memory_limit" if memory_mb and _is_oom(err) else "exception"
        result = (kind, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}")
    try:
        conn.send(result)
    except MemoryError:
        conn.send(("memory_limit", "result too large for the memory limit"))
    except Exception as err:  # e.g. an unpicklable result: a bug, reported as such
        conn.send(("exception", f"cannot return the result: {type(err).__name__}: {err}"))
    finally:
        conn.close()


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


def run_guarded(fn, args: tuple, *, timeout_s: float, memory_mb: float | None):
    """Run ``fn(*args)`` in a child process; return its result or raise GuardFailure.

    Exceptions raised by ``fn`` come back as GuardFailure("exception", message) unless ``fn``
    turns them into results itself. A dict result that failed (``status`` not "ok", or marked
    ``suspect``) because FFmpeg could not start threads under the limit is memory_limit.
    """
    ctx = _context(args)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, memory_mb), daemon=True)
    try:
        with _main_hidden():
            proc.start()
    except Exception as err:  # out of descriptors, an argument that cannot be pickled, ...
        parent.close()
        raise GuardFailure("exception", f"cannot start the guarded process: {type(err).__name__}: {err}") from None
    finally:
        child.close()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuardFailure("timeout", f"no result after {timeout_s:g}s; decoder process killed")
            if parent.poll(min(left, 0.5)):
                try:
                    status, payload = parent.recv()
                except (EOFError, OSError):
                    status, payload = None, None
                if status == "ok":
                    return payload
                if status in ("memory_limit", "exception"):
                    raise GuardFailure(status, payload)
                break
            if not proc.is_alive():
                break
        proc.join(5)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:  # real-time signals have no name
                name = f"signal {-code}"
            if -code == signal.SIGKILL:  # the kernel's OOM killer, or another hard kill
                raise GuardFailure("memory_limit", f"decoder process killed ({name})")
            raise GuardFailure("decoder_crash", f"decoder process died with {name}")
        raise GuardFailure("decoder_crash", f"decoder process exited with code {code} and no result")
    finally:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own meanwhile
                pass
            proc.join(5)
        parent.close()
