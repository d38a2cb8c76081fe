"""Functions the guard tests run in the child process (importable there by name)."""

import ctypes
import time


def double(x):
    return 2 * x


def hang():
    time.sleep(600)


def segfault():
    ctypes.string_at(0)


def hog():
    chunks = []
    while True:
        chunks.append(bytearray(50_000_000))


def boom():
    raise ValueError("bad input")


_tainted = []  # state a call leaves behind in a child that lives on


def pid():
    import os

    return os.getpid()


def taint():
    _tainted.append(1)
    return "tainted"


def crash_if_tainted():
    if _tainted:
        ctypes.string_at(0)
    return "clean"


def leak(mb):
    _tainted.append(bytearray(mb * 1024 * 1024))
    return len(_tainted)


def rejected():
    return {"status": "rejected", "reason": "bad_file"}
