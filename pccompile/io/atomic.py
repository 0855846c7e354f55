"""Atomic output paths: a file or a directory appears whole under its name, or not at all.

Reads: the requested output path (does it exist, what is in it, is its folder writable).
Writes: whatever the caller writes into the temporary path :func:`atomic_output` yields, in a
hidden temporary folder next to the requested path, then renamed into place with ``os.replace``.
Invariants: an interrupted or failed write (``KeyboardInterrupt`` included) never leaves a
half-written file or directory under the requested name, nor a temporary folder; error messages
name the requested path, never the temporary one; what is published gets the permissions of the
user's umask (as ``open``/``mkdir`` would give it), not ``tempfile``'s private 0700/0600. An
existing output is only replaced when ``overwrite=True``, and a directory only when everything in
it is something the writer itself wrote (``replaceable``): a folder holding anything else, a
user's notes or a nested output, is never deleted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PCCompileError

__all__ = ["OutputExistsError", "WriteFailedError", "atomic_output", "check_output", "umask"]

log = logging.getLogger(__name__)

# For a directory: the names of the entries the writer put there (so --force may replace them).
Replaceable = Callable[[Path], Collection[str]]


class OutputExistsError(PCCompileError, FileExistsError):
    """The output path exists and overwriting it was not asked for (or is not safe)."""

    cli_words = {"overwrite=True": "--force"}


class WriteFailedError(PCCompileError, OSError):
    """Writing an output failed part-way: the disk is full (``ENOSPC``, or ``torch.save``'s
    "PytorchStreamWriter failed" / "unexpected pos", which is how a full disk reaches it) or
    another I/O error. Nothing was published under the requested name."""

    def __str__(self) -> str:
        return str(self.strerror)


# how torch.save's C++ writer reports a failed write (a full disk among others)
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "inline_container", "unexpected pos")


def _write_failed(exc: BaseException, final: Path) -> WriteFailedError | None:
    """A :class:`WriteFailedError` for a failed write (``None`` for other errors)."""
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    torch_write = isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILED)
    if not (no_space or torch_write):
        return None
    folder = final.parent
    try:
        free = shutil.disk_usage(folder).free
        room = f"the disk holding {str(folder)!r} has {free / 2**20:.1f} MiB free"
    except OSError:
        room = f"the disk holding {str(folder)!r} may be full"
    cause = " ".join(str(exc).split())[:160]
    return WriteFailedError(
        errno.ENOSPC if no_space else errno.EIO,
        f"Writing {str(final)!r} failed ({cause}); {room}. Nothing was written under that name: "
        f"free some space or choose an output folder on another disk.",
    )


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(old)
    return old


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    directory: bool = False,
    replaceable: Replaceable | None = None,
) -> None:
    """Check, before any work, that ``path`` can be written: new, or replaceable with
    ``overwrite``, and its nearest existing folder a writable directory.

    Raises:
        OutputExistsError: ``path`` exists and may not be replaced (the message says why).
        OSError: the folder it would go in cannot be created or written.
    """
    final = Path(path)
    if final.exists() or final.is_symlink():
        _check_existing(final, overwrite, directory, replaceable)
    anc = final.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputExistsError(
            f"Cannot write {str(final)!r}: {str(anc)!r} is a file, not a folder; choose another "
            f"output path."
        )
    try:  # the real test (os.access says yes to root on a read-only file system)
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as exc:
        raise OSError(
            exc.errno, f"Cannot write into {str(anc)!r} ({exc.strerror})", str(final)
        ) from None


@contextmanager
def atomic_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    directory: bool = False,
    replaceable: Replaceable | None = None,
) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; publish it on success.

    For a file, the yielded path has ``path``'s file name inside a fresh temporary folder in the
    same directory (so sidecar files such as ONNX external data, named after it, come along);
    everything in that folder is renamed next to ``path`` with ``os.replace``, ``path`` itself
    last. For a directory (``directory=True``) the yielded path is an empty temporary directory
    that replaces ``path`` as a whole. On any exception (``KeyboardInterrupt`` included) the
    temporary folder is removed and ``path`` is left as it was; an ``OSError`` or a message that
    named the temporary path names ``path`` instead.

    Args:
        path: the requested output.
        overwrite: replace an existing output (a directory only when it is empty or holds
            nothing but what ``replaceable`` says the writer wrote there).
        directory: the output is a directory.
        replaceable: for a directory, ``replaceable(existing)`` gives the names of the entries
            the writer made in it (e.g. from its manifest).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False, or it is not safe to
            replace.

    Example:
        >>> with atomic_output("out/model.onnx") as tmp:
        ...     tmp.write_bytes(b"...")
    """
    final = Path(path)
    check_output(final, overwrite=overwrite, directory=directory, replaceable=replaceable)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        try:
            if directory:
                os.chmod(tmpdir, 0o777 & ~umask())  # mkdtemp's 0700 would be published
                yield tmpdir
                _publish_dir(tmpdir, final)
            else:
                target = tmpdir / final.name
                yield target
                if not target.exists():
                    raise RuntimeError(f"the writer did not create {str(final)!r}")
                for extra in sorted(tmpdir.iterdir()):
                    if extra != target:
                        os.replace(extra, final.parent / extra.name)
                os.replace(target, final)
        except BaseException as exc:
            _name_the_final_path(exc, tmpdir, final if directory else final.parent)
            failed = _write_failed(exc, final)
            if failed is not None:
                raise failed from exc
            raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("wrote %s", final)


def _name_the_final_path(exc: BaseException, tmpdir: Path, instead: Path) -> None:
    """Rewrite, in place, the temporary folder's name in ``exc`` to the path the user asked for."""
    old, new = str(tmpdir), str(instead)
    if isinstance(exc, OSError):
        for attr in ("filename", "filename2"):
            value = getattr(exc, attr, None)
            if isinstance(value, (str, os.PathLike)) and old in os.fspath(value):
                setattr(exc, attr, os.fspath(value).replace(old, new))
    if not isinstance(exc, OSError) and any(isinstance(a, str) and old in a for a in exc.args):
        exc.args = tuple(a.replace(old, new) if isinstance(a, str) else a for a in exc.args)


def _check_existing(
    final: Path, overwrite: bool, directory: bool, replaceable: Replaceable | None
) -> None:
    if not overwrite:
        raise OutputExistsError(
            f"{str(final)!r} already exists; pass overwrite=True to replace it, or "
            f"choose another output path."
        )
    if not directory:
        if final.is_dir():
            raise OutputExistsError(
                f"{str(final)!r} is a directory; give a file name (e.g. "
                f"{str(final / 'model.onnx')!r})."
            )
        return
    if not final.is_dir():
        raise OutputExistsError(
            f"{str(final)!r} exists and is not a directory; remove it or choose another output "
            f"directory."
        )
    ours = set(replaceable(final)) if replaceable is not None else set()
    foreign = sorted(
        e.name + ("/" if e.is_dir() else "") for e in final.iterdir() if e.name not in ours
    )
    if foreign:
        what = "was not written by pccompile" if not ours else "holds what pccompile did not write"
        shown = ", ".join(foreign[:5]) + (
            f", ... ({len(foreign)} in all)" if len(foreign) > 5 else ""
        )
        raise OutputExistsError(
            f"{str(final)!r} {what} ({shown}); overwrite=True only replaces what pccompile "
            f"wrote, so move those away or choose another output directory."
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
