"""What a run prints: vidcurate's own lines on the terminal; Ray's and the libraries' output in a
log file, unless ``--verbose``.

Ray, Ray Data, PyTorch and transformers write to the process's standard streams from Python,
from C++ (Ray's core worker) and from every worker (forwarded to the driver). ``divert`` points
file descriptors 1 and 2 at the log file, so all of that lands there, whatever wrote it, while
vidcurate's own lines go to a copy of the terminal's stdout. It is called only when Ray is about
to start: a run that finds its job complete, or fails a check, creates no log file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

LOG_DIR = "_work/logs"


def log_path(output: str) -> Path:
    """Where a run on ``output`` writes Ray's and the libraries' output: ``_work/logs/run.log``
    inside a local output; for an S3 output, a local file named after it (Ray's chatter is
    not worth a PUT per line)."""
    if output.startswith("s3://"):
        tag = hashlib.sha1(output.encode()).hexdigest()[:12]
        name = output[len("s3://"):].split("/")[0]
        return Path(tempfile.gettempdir()) / "vidcurate-logs" / f"{name}-{tag}.log"
    return Path(output) / LOG_DIR / "run.log"


class Console:
    """``print`` for vidcurate's lines; ``divert`` sends everything else to the log file."""

    def __init__(self, log_file: Path, verbose: bool = False):
        self.log_file, self.verbose = log_file, verbose
        self.out = sys.stdout
        self._saved: tuple[int, int] | None = None

    def print(self, *args) -> None:
        print(*args, file=self.out, flush=True)

    def divert(self) -> None:
        """From now on, file descriptors 1 and 2 write to the log file (not with ``verbose``)."""
        if self.verbose or self._saved is not None:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.write(fd, f"\n==== vidcurate run, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.print(f"vidcurate: Ray's and the libraries' output goes to {self.log_file} (--verbose shows it here)")

    def restore(self) -> None:
        """Standard streams back to where they were (before an error is printed)."""
        if self._saved is None:
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        self.out.close()
        self.out = sys.stdout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
