"""Smoke test of ``benchmarks/reproduce.py --quick`` on a fake Fashion-MNIST the test writes (no
real data in CI; MNIST-1D is generated): the page and its figures are written, and the numbers
that are properties, not measurements, hold on any data: Z-IL bitwise equal to BP through the
run (the unrolled GRU against BPTT over the same ops; against the fused kernel to rounding),
every broken condition off BP, rows only for registered rules. No timing is asserted."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pccompile

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "reproduce.py"


def _idx(path: Path, arr: np.ndarray) -> None:
    head = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def _fake_fashion(root: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 256)):
        y = rng.integers(0, 10, n)
        # class-dependent bright rows, so the models have something to learn
        x = rng.integers(0, 64, (n, 28, 28))
        x[np.arange(n), 2 * y + 4, :] = 255
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)


def test_reproduce_quick_writes_the_page_and_its_properties_hold(tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    _fake_fashion(data)
    page, out = tmp_path / "docs" / "reproduction.md", tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--fashion-mnist", str(data)]
    proc = subprocess.run(
        [*cmd, "--out", str(page), "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())

    # 1. Z-IL = BP bitwise through the whole run (CNN; GRU as a layer vertex), the unrolled GRU
    #    to float32 rounding (its cells against torch's fused kernel)
    seed = {r["name"]: r for r in res["seed"]}
    cnn, same, fused, layer = (seed[n] for n in seed)  # in the script's order
    assert "CNN" in cnn["name"] and "same unrolled ops" in same["name"] and "layer" in layer["name"]
    for r in (cnn, same, layer):
        assert all(e["bitwise"] and e["max_diff"] == 0 for e in r["epochs"]), r["name"]
        assert r["loss_bp"] == r["loss_zil"]
    assert max(e["max_diff"] for e in fused["epochs"]) < 1e-4  # kernel rounding, 2 short epochs
    assert same["vertices"] > 40  # one vertex per time step of the length-40 sequences

    # 2. the held row is BP; every broken condition leaves it from the first step
    rows = res["conditions"]["rows"]
    assert rows[0]["bitwise"] and rows[0]["grad_divergence_step1"] == 0
    assert len(rows) == 6 and all(r["grad_divergence_step1"] > 0.1 for r in rows[1:])

    # 3./4. a row for every registered rule of the tables, none for the others
    field_rules = {r["rule"] for r in res["field"]["rows"]}
    assert {"bp", "il", "ipc"} <= field_rules <= set(pccompile.rules.RULES) | {"bp"}
    for r in res["field"]["rows"]:
        assert len(r["runs"]) and all(len(x["accs"]) == r["epochs"] for x in r["runs"])
    left = {x["row"] for x in res["field"]["left_out"] + res["depth"]["left_out"]}
    assert ("epc" in pccompile.rules.RULES) == ("ePC (T=5)" not in left)
    assert [c["blocks"] for c in res["depth"]["rows"][0]["cells"]] == [2, 4]

    text = page.read_text()
    assert res["meta"]["git"]["commit"][:12] in text and "NOT the full profile" in text
    for section in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert section in text
    for fig in ("seed", "conditions", "depth"):
        assert (page.parent / "figures" / f"reproduction_{fig}.png").stat().st_size > 1000

    # --render rewrites the page from the saved run alone
    page.unlink()
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--render", str(out), "--out", str(page)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert page.read_text() == text


def test_render_merges_runs_of_other_rows_and_seeds():
    """``--render A B``: a row run with other seeds in another process gains those seeds; a row
    with other epochs is refused (its numbers would not be one row's)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reproduce

    def run(seed, label="IL", epochs=25):
        row = {"model": "mlp", "label": label, "epochs": epochs, "runs": [{"seed": seed}]}
        return {"rows": [row], "left_out": [{"row": "ePC", "why": "not registered"}]}

    into = run(0)
    reproduce._merge_rows(into, run(2))
    reproduce._merge_rows(into, run(1))
    reproduce._merge_rows(into, run(1))  # the same seed twice counts once
    reproduce._merge_rows(into, run(0, label="iPC"))
    assert [r["label"] for r in into["rows"]] == ["IL", "iPC"]
    assert [x["seed"] for x in into["rows"][0]["runs"]] == [0, 1, 2]
    assert len(into["left_out"]) == 1
    with pytest.raises(SystemExit, match="epochs"):
        reproduce._merge_rows(into, run(3, epochs=10))
