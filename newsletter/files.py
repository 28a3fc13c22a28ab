"""Writing files all or nothing: a crash never leaves half a page, half an export or half an outbox
behind, and a reader of the file sees the old one or the new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path, mode: str = "wb", *, private: bool = False, **open_args: Any) -> Iterator[IO[Any]]:
    """A file opened for writing under a temporary name in `path`'s folder, synced and renamed
    into place once the block ends without an error (removed otherwise). `private`: readable by
    its owner only (an export holds people's addresses); else by anyone (a web server serves it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_args) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if not private:  # mkstemp created it owner-only
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.filename is None:  # a failed write (a full disk) names no file: name the one meant
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` all or nothing (text as UTF-8)."""
    with atomic_file(path) as out:
        out.write(data.encode("utf-8") if isinstance(data, str) else data)
