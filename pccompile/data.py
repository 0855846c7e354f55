"""Data sets that need no download: scikit-learn's embedded digits, and loaders for MNIST and
CIFAR-10 files already on disk (IDX and CIFAR binary formats; nothing is unpickled).

scikit-learn is optional (the ``data`` extra: ``pip install 'pccompile[data]'``); only
:func:`digits` needs it, and imports it when called."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .extras import require

__all__ = ["digits", "load_mnist", "load_cifar10"]


def digits(
    dtype: torch.dtype = torch.float32, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped in its wheel.

    Returns:
        ``x_train, y_train, x_test, y_test``; images shaped ``(N, 1, 8, 8)`` scaled to [0, 1] and
        standardised with the training set's mean and std; labels ``torch.long``.

    Raises:
        ConfigError: scikit-learn is not installed (it is the ``data`` extra); the message
            names ``pip install 'pccompile[data]'``.
    """
    require("data", "digits()")  # the data set ships in scikit-learn's wheel
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float64) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).unsqueeze(1).to(dtype)
    return x[train], y[train], x[test], y[test]


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise InputError(f"{stem}[.gz] not found in {root}; download MNIST there yourself first.")


def _read_idx(path: Path) -> np.ndarray:
    with _open(path) as f:
        head = f.read(4)
        if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
            raise InputError(f"{path} is not an unsigned-byte IDX file (bad magic {head!r}).")
        ndim = head[3]
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{path} is truncated: header says {shape}, found {data.size} bytes.")
    return data.reshape(shape)


def load_mnist(root: str | Path, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the four IDX files in ``root`` (optionally gzipped): images ``(N, 1, 28, 28)``
    float32 in [0, 1], labels long."""
    root = Path(root)
    prefix = "train" if train else "t10k"
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise InputError(f"MNIST in {root}: {len(images)} images but {len(labels)} labels.")
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(root: str | Path, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the binary version's ``data_batch_{1..5}.bin`` / ``test_batch.bin`` in
    ``root``: images ``(N, 3, 32, 32)`` float32 in [0, 1], labels long."""
    root = Path(root)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    files = [root / n for n in names if (root / n).exists()]
    if not files:
        raise InputError(f"No CIFAR-10 binary batches ({names[0]} ...) in {root}.")
    record = 1 + 3 * 32 * 32
    chunks = []
    for path in files:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % record:
            raise InputError(f"{path} is not a CIFAR-10 binary batch (size {raw.size}).")
        chunks.append(raw.reshape(-1, record))
    data = np.concatenate(chunks)
    x = torch.from_numpy(data[:, 1:].copy()).float().div_(255.0).reshape(-1, 3, 32, 32)
    return x, torch.from_numpy(data[:, 0].astype(np.int64))
