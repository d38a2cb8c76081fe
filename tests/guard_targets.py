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
