"""Files the library writes are written atomically: a kill never leaves a broken file.

:func:`atomic_write` writes to a temporary file in the destination's folder, flushes it to
disk, and only then renames it over the destination (``os.replace``, atomic on POSIX and
Windows): a reader sees the old file or the new one, never half of one. The COCO folders of
:mod:`scratchvision.data` and the checkpoints of ``scratchvision train`` are written this way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write, *, binary: bool) -> None:
    """Run ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``;
    on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the data private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
