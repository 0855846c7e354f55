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
