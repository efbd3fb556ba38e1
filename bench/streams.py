"""Where a benchmark's output goes: the gateway's JSON logs (and anything the runtime's threads
print) into a file, the benchmark's own report and progress lines to the real terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO


@contextlib.contextmanager
def fds_into(sink: BinaryIO) -> Iterator[tuple[IO[Any], IO[Any]]]:
    """fds 1 and 2 (child processes included) into `sink`; yields (stdout, stderr) streams on the
    real ones. Everything is put back on the way out, whatever happened."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()
        err.close()


@contextlib.contextmanager
def fds_to(path: Path) -> Iterator[tuple[IO[Any], IO[Any]]]:
    """`fds_into` a log file at `path` (truncated)."""
    with open(path, "wb") as sink, fds_into(sink) as streams:
        yield streams
