"""Atomic output paths: a file or a directory appears whole under its name, or not at all.

Reads: the requested output path (does it exist, is it a pccompile output directory).
Writes: whatever the caller writes into the temporary path :func:`atomic_output` yields, in a
temporary folder next to the requested path, then renamed into place with ``os.replace``.
Invariants: an interrupted or failed write (``KeyboardInterrupt`` included) never leaves a
half-written file or directory under the requested name, nor a temporary folder; an existing
output is only replaced when ``overwrite=True``, and a directory only when it is empty or holds a
pccompile ``manifest.json`` (a user's folder named by mistake is never deleted).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PCCompileError

__all__ = ["OutputExistsError", "atomic_output"]

log = logging.getLogger(__name__)

# A directory that --force may replace must look like one pccompile wrote (or be empty): never
# delete a user's folder because it was named by mistake. The same name as io.artifact.MANIFEST.
DIR_MARKER = "manifest.json"


class OutputExistsError(PCCompileError, FileExistsError):
    """The output path exists and overwriting it was not asked for (or is not safe)."""


@contextmanager
def atomic_output(
    path: str | os.PathLike, *, overwrite: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; publish it on success.

    For a file, the yielded path has ``path``'s file name inside a fresh temporary folder in the
    same directory (so sidecar files such as ONNX external data, named after it, come along);
    everything in that folder is renamed next to ``path`` with ``os.replace``, ``path`` itself
    last. For a directory (``directory=True``) the yielded path is an empty temporary directory
    that replaces ``path`` as a whole. On any exception (``KeyboardInterrupt`` included) the
    temporary folder is removed and ``path`` is left as it was.

    Args:
        path: the requested output.
        overwrite: replace an existing output (a directory only when it is empty or holds a
            pccompile ``manifest.json``).
        directory: the output is a directory.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False, or it is not safe to
            replace.

    Example:
        >>> with atomic_output("out/model.onnx") as tmp:
        ...     tmp.write_bytes(b"...")
    """
    final = Path(path)
    _check_target(final, overwrite, directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        if directory:
            yield tmpdir
            _publish_dir(tmpdir, final)
        else:
            target = tmpdir / final.name
            yield target
            if not target.exists():
                raise RuntimeError(f"the writer did not create {target}")
            for extra in sorted(tmpdir.iterdir()):
                if extra != target:
                    os.replace(extra, final.parent / extra.name)
            os.replace(target, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("wrote %s", final)


def _check_target(final: Path, overwrite: bool, directory: bool) -> None:
    if not final.exists() and not final.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(
            f"{str(final)!r} already exists; pass --force (overwrite=True) to replace it, or "
            f"choose another output path."
        )
    if directory:
        if not final.is_dir():
            raise OutputExistsError(
                f"{str(final)!r} exists and is not a directory; remove it or choose another "
                f"output directory."
            )
        if any(final.iterdir()) and not (final / DIR_MARKER).is_file():
            raise OutputExistsError(
                f"{str(final)!r} exists and was not written by pccompile (no {DIR_MARKER}); "
                f"--force only replaces pccompile output directories: choose another -o."
            )
    elif final.is_dir():
        raise OutputExistsError(
            f"{str(final)!r} is a directory; give a file name (e.g. {str(final / 'model.onnx')!r})."
        )


def _publish_dir(tmpdir: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmpdir, final)
        return
    # os.replace cannot replace a non-empty directory: move the old one aside first, then drop it.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.replace(final, old / final.name)
    try:
        os.replace(tmpdir, final)
    except BaseException:
        os.replace(old / final.name, final)  # put the old output back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
