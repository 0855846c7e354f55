import gzip
import struct
import sys

import numpy as np
import pytest
import torch

from pccompile import ConfigError, InputError
from pccompile.data import digits, load_cifar10, load_mnist


def test_digits_split_is_deterministic_and_standardised():
    xtr, ytr, xte, yte = digits()
    assert xtr.shape[1:] == (1, 8, 8) and len(xtr) + len(xte) == 1797
    assert set(ytr.tolist()) == set(range(10))
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std().item() - 1) < 1e-3
    assert torch.equal(digits()[1], ytr)


def _without_sklearn(monkeypatch):
    """Simulate an install without the ``data`` extra: importing sklearn fails."""
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    _without_sklearn(monkeypatch)
    with pytest.raises(ConfigError, match=r"scikit-learn.*pip install 'pccompile\[data\]'"):
        digits()


def test_demo_without_scikit_learn_says_so_in_one_line_before_the_slow_part(monkeypatch, capsys):
    from pccompile import demo

    _without_sklearn(monkeypatch)
    monkeypatch.setattr(demo.pccompile, "convert", None)  # reaching convert() would TypeError
    assert demo.main() == 2  # as the command line: bad setup, exit 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("pccompile demo: error: ") and "pip install 'pccompile[data]'" in err


def _idx(path, arr, gz=False):
    head = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_mnist_idx_roundtrip(tmp_path):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, gz=True)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1, 4]))
    x, y = load_mnist(tmp_path, train=False)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [3, 1, 4]
    assert x[0, 0, 0, 5].item() == pytest.approx(5 / 255)


def test_mnist_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    _idx(tmp_path / "train-labels-idx1-ubyte", np.array([1]))
    with pytest.raises(InputError, match="bad magic"):
        load_mnist(tmp_path)


def test_cifar_binary(tmp_path):
    rec = np.zeros((2, 1 + 3072), dtype=np.uint8)
    rec[:, 0] = [7, 2]
    rec[1, 1:] = 255
    rec.tofile(tmp_path / "test_batch.bin")
    x, y = load_cifar10(tmp_path, train=False)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [7, 2] and x[1].min().item() == 1.0
    (tmp_path / "test_batch.bin").write_bytes(b"123")
    with pytest.raises(InputError, match="not a CIFAR-10"):
        load_cifar10(tmp_path, train=False)


def _fashion_files(root, n_train=4, n_test=3):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, gz=True)


def test_fashion_mnist_by_name_reads_the_debian_folder(tmp_path, monkeypatch):
    from pccompile import data

    _fashion_files(tmp_path)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    ds = data.load_dataset("fashion-mnist")
    assert ds.name.startswith("fashion-mnist") and ds.num_classes == 10
    assert ds.x_train.shape == (4, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert ds.y_test.tolist() == [0, 1, 2] and ds.classes[9] == "Ankle boot"
    raw = data._read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(raw.copy()).float() / 255)


def test_fashion_mnist_absent_names_the_apt_package(tmp_path, monkeypatch):
    from pccompile import data

    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"apt-get install dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist")
    with pytest.raises(InputError, match=r"apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(tmp_path)  # an empty folder given by hand


def test_mnist1d_is_generated_deterministically_and_leaves_global_rngs_alone():
    pytest.importorskip("mnist1d")
    import random

    from pccompile.data import load_dataset, mnist1d

    np.random.seed(7)
    random.seed(7)
    a = mnist1d(num_samples=200, seed=3)
    assert np.random.rand() == np.random.RandomState(7).rand()  # numpy's state restored
    assert random.random() == random.Random(7).random()
    b = mnist1d(num_samples=200, seed=3)
    assert a.x_train.shape == (160, 40, 1) and a.x_test.shape == (40, 40, 1)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.long
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, mnist1d(num_samples=200, seed=4).x_train)
    assert set(a.y_train.tolist()) <= set(range(10))
    assert load_dataset("mnist1d").x_train.shape == (4000, 40, 1)  # the package's default


def test_mnist1d_without_the_package_names_the_extra(monkeypatch):
    from pccompile.data import mnist1d

    monkeypatch.setitem(sys.modules, "mnist1d", None)
    with pytest.raises(ConfigError, match=r"mnist1d.*pip install 'pccompile\[data\]'"):
        mnist1d()
