"""Data sets that need no download: scikit-learn's embedded digits, Fashion-MNIST from Debian's
``dataset-fashion-mnist`` package, MNIST-1D made by its generator, and loaders for MNIST and
CIFAR-10 files already on disk (IDX and CIFAR binary formats; nothing is unpickled), and image
folders (``torchvision.datasets.ImageFolder`` layout). :func:`load_dataset` picks one from a name
or a directory, as ``pccompile train --data`` does.

scikit-learn and mnist1d are optional (the ``data`` extra: ``pip install 'pccompile[data]'``);
only :func:`digits` and :func:`mnist1d` need them, and import them when called. Fashion-MNIST is
a system package (``apt-get install dataset-fashion-mnist``), read from
:data:`FASHION_MNIST_DIR`."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .extras import require

__all__ = [
    "FASHION_MNIST_DIR",
    "Dataset",
    "digits",
    "fashion_mnist",
    "mnist1d",
    "load_mnist",
    "load_cifar10",
    "load_image_folder",
    "load_dataset",
]

# Where Debian's (and Ubuntu's) `dataset-fashion-mnist` package puts the four IDX .gz files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def digits(
    dtype: torch.dtype = torch.float32,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped in its wheel.

    ``stratify=True`` splits with scikit-learn's ``train_test_split`` keeping the class
    proportions (the split PC papers' digits experiments use); otherwise a seeded permutation.

    Returns:
        ``x_train, y_train, x_test, y_test``; images shaped ``(N, 1, 8, 8)`` scaled to [0, 1] and
        standardised with the training set's mean and std; labels ``torch.long``.

    Raises:
        ConfigError: scikit-learn is not installed (it is the ``data`` extra); the message
            names ``pip install 'pccompile[data]'``.
    """
    require("data", "digits()", ("sklearn",))  # the data set ships in scikit-learn's wheel
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float64) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    if stratify:
        from sklearn.model_selection import train_test_split

        idx = torch.arange(len(y)).numpy()
        tr, te = train_test_split(
            idx, test_size=test_fraction, stratify=bunch.target, random_state=seed
        )
        train, test = torch.as_tensor(tr), torch.as_tensor(te)
    else:
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


_IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
_MNIST_FILE = "train-images-idx3-ubyte"
_CIFAR_FILE = "data_batch_1.bin"


@dataclass
class Dataset:
    """A classification data set held in memory: a training and a test split.

    Attributes:
        name: what it is (``digits``, ``fashion-mnist``, ``mnist1d``, ``mnist``, ``cifar10``,
            ``imagefolder``) and where from.
        x_train, y_train, x_test, y_test: images ``(N, C, H, W)`` (MNIST-1D: sequences
            ``(N, 40, 1)``) and ``torch.long`` labels.
        num_classes: the number of classes (labels lie in ``[0, num_classes)``).
        classes: the class names, where the data set has them.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: list[str] | None = None


def fashion_mnist(root: str | Path | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017; 60,000 training and 10,000 test images of clothes, 10
    classes) from its four IDX files, as Debian's ``dataset-fashion-mnist`` package installs them.

    Args:
        root: the folder holding ``train-images-idx3-ubyte[.gz]`` and the other three files;
            default :data:`FASHION_MNIST_DIR` (``/usr/share/datasets/fashion-mnist``).

    Returns:
        A :class:`Dataset`: images ``(N, 1, 28, 28)`` float32 in [0, 1], labels long.

    Raises:
        InputError: the files are not there (the message names ``apt-get install
            dataset-fashion-mnist``), or do not read as IDX.
    """
    folder = FASHION_MNIST_DIR if root is None else Path(root).expanduser()
    if _found(folder, _MNIST_FILE) is None:
        raise InputError(
            f"Fashion-MNIST is not in {folder} (no {_MNIST_FILE}[.gz]). Install it with "
            f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu: 31 MB, offline), or give "
            f"the folder holding its four IDX files."
        )
    folder = _found(folder, _MNIST_FILE)
    xtr, ytr = load_mnist(folder, train=True)
    xte, yte = load_mnist(folder, train=False)
    return Dataset(f"fashion-mnist {folder}", xtr, ytr, xte, yte, 10, list(FASHION_MNIST_CLASSES))


def mnist1d(num_samples: int = 5000, *, seed: int = 42, train_split: float = 0.8) -> Dataset:
    """MNIST-1D (Greydanus 2020): length-40 one-dimensional signals of 10 classes, made by the
    ``mnist1d`` package's generator (``mnist1d.data.make_dataset``); nothing is downloaded.

    The defaults are the package's (5,000 samples: 4,000 train, 1,000 test; seed 42), which give
    the data set of its paper. The generator seeds numpy's and Python's global random states;
    they are restored afterwards.

    Returns:
        A :class:`Dataset`: sequences ``(N, 40, 1)`` float32 (batch first, one feature per time
        step: a many-to-one RNN's input), standardised by the generator, labels long.

    Raises:
        ConfigError: mnist1d is not installed (the ``data`` extra); the message names
            ``pip install 'pccompile[data]'``.
    """
    require("data", "mnist1d()", ("mnist1d",))
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), train_split
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)  # the generator; get_dataset(download=True) would fetch a file
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)

    def seq(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).unsqueeze(-1)

    def lab(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    return Dataset(
        f"mnist1d (generated, {num_samples} samples, seed {seed})",
        seq(d["x"]),
        lab(d["y"]),
        seq(d["x_test"]),
        lab(d["y_test"]),
        10,
        [str(i) for i in range(10)],
    )


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_images(root: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images, labels, size, mode = [], [], None, None
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as im:
                    mode = mode or ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB")
                    arr = np.asarray(im.convert(mode), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"{f} is not a readable image ({exc}); remove it.") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise InputError(
                    f"{f} is {arr.shape[1]}x{arr.shape[0]}, the folder's first image "
                    f"{size[1]}x{size[0]}; resize the images to one size first."
                )
            images.append(arr)
            labels.append(label)
    if not images:
        raise InputError(f"No images ({', '.join(_IMAGE_SUFFIXES[:3])} ...) under {root}.")
    x = torch.from_numpy(np.stack(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)


def load_image_folder(root: str | Path, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """An image folder in ``torchvision.datasets.ImageFolder``'s layout, read into memory.

    Either ``root/train/CLASS/*.png`` and ``root/test/CLASS/*.png`` (or ``val/``), or
    ``root/CLASS/*.png`` split into train and test by a generator seeded with ``seed``. Images
    must all have one size; grey images give one channel, others three, scaled to [0, 1].

    Raises:
        InputError: no class folders, no images, an unreadable image, images of several sizes.
    """
    root = Path(root)
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = [p.name for p in _class_dirs(root / "train")]
        if not classes:
            raise InputError(f"{root / 'train'} has no class folders (train/CLASS/image.png).")
        xtr, ytr = _read_images(root / "train", classes)
        xte, yte = _read_images(test_dir, [c for c in classes if (test_dir / c).is_dir()])
        return Dataset(f"imagefolder {root}", xtr, ytr, xte, yte, len(classes), classes)
    classes = [p.name for p in _class_dirs(root)]
    if not classes:
        raise InputError(
            f"{root} is neither MNIST (IDX files), CIFAR-10 (binary batches) nor an image folder "
            f"(CLASS/image.png, or train/CLASS/ and test/CLASS/); check --data."
        )
    x, y = _read_images(root, classes)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset(f"imagefolder {root}", x[tr], y[tr], x[te], y[te], len(classes), classes)


def _found(root: Path, name: str) -> Path | None:
    for sub in ("", "raw", "MNIST/raw", "cifar-10-batches-bin"):
        folder = root / sub if sub else root
        if (folder / name).exists() or (folder / (name + ".gz")).exists():
            return folder
    return None


def load_dataset(data: str | Path, *, seed: int = 0) -> Dataset:
    """The data set ``data`` names: ``"digits"`` (embedded, needs the ``data`` extra),
    ``"fashion-mnist"`` (Debian's package, :func:`fashion_mnist`), ``"mnist1d"`` (generated,
    :func:`mnist1d`), or a directory holding MNIST's IDX files, CIFAR-10's binary batches, or an
    image folder. Nothing is ever downloaded.

    Raises:
        InputError: an unknown name, a missing directory, a directory in none of the formats,
            files in a format that does not read, or ``fashion-mnist`` not installed.
        ConfigError: ``digits`` or ``mnist1d`` without the ``data`` extra.
    """
    text = str(data)
    if text == "digits":
        xtr, ytr, xte, yte = digits(seed=seed)
        return Dataset("digits", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)])
    if text in ("fashion-mnist", "fashion_mnist"):
        return fashion_mnist()
    if text in ("mnist1d", "mnist-1d"):
        return mnist1d()
    root = Path(text).expanduser()
    if not root.exists():
        if "/" in text or "\\" in text or text.startswith("."):
            raise InputError(f"--data {text!r}: no such directory; give an existing folder.")
        raise InputError(
            f"--data {text!r} is not a data set pccompile knows, nor a directory; use digits, "
            f"fashion-mnist or mnist1d, or a folder of MNIST/CIFAR-10 files or images already on "
            f"disk (nothing is downloaded)."
        )
    if not root.is_dir():
        raise InputError(f"--data {text!r} is a file, not a directory; give its folder.")
    if (folder := _found(root, _MNIST_FILE)) is not None:
        xtr, ytr = load_mnist(folder, train=True)
        xte, yte = load_mnist(folder, train=False)
        return Dataset(f"mnist {folder}", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)])
    if (folder := _found(root, _CIFAR_FILE)) is not None:
        if not (folder / "test_batch.bin").exists():
            raise InputError(f"CIFAR-10 in {folder} has no test_batch.bin; copy it there.")
        xtr, ytr = load_cifar10(folder, train=True)
        xte, yte = load_cifar10(folder, train=False)
        return Dataset(f"cifar10 {folder}", xtr, ytr, xte, yte, 10)
    return load_image_folder(root, seed=seed)
