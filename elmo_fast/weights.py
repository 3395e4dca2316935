"""bilm-tf weight files (hdf5, TF orientation) <-> plain dicts of float32 numpy arrays (vocabulary files:
:mod:`elmo_fast.vocab`).

Dataset names and shapes follow docs/numerics.md#file-layouts. Nothing here knows about torch modules: the model maps
dataset names to its parameters (see :mod:`elmo_fast.nn.bilm`). Files are read without pickle and
written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import stat
from typing import IO, Iterable, Mapping

import h5py
import numpy as np

from .atomic import atomic_path
from .chars import NUM_SYMBOLS
from .errors import MissingFileError, UserError
from .options import ElmoOptions

__all__ = ["WeightFileError", "expected_shapes", "read_weights", "write_weights", "lstm_prefix", "create_h5",
           "h5_size_estimate", "read_softmax_weights", "write_softmax_weights", "check_finite",
           "open_hdf5", "get_dataset", "read_dataset"]


class WeightFileError(UserError):
    """A weight file is missing a dataset or a dataset has the wrong shape."""


def lstm_prefix(direction: int, layer: int) -> str:
    """hdf5 group of one LSTM cell: direction 0 = forward, 1 = backward."""
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def expected_shapes(options: ElmoOptions) -> dict[str, tuple[int, ...]]:
    """Every dataset a weight file for ``options`` must hold, with its shape.

    ``CNN_proj`` is expected when F != P; when F == P it is optional (bilm-tf omits it), see
    :func:`read_weights`.
    """
    if options.char_cnn is None:
        raise WeightFileError("word-input models (no 'char_cnn' in options) are not supported")
    c, lstm = options.char_cnn, options.lstm
    F, P, C, d = c.n_filters, lstm.projection_dim, lstm.dim, c.embedding_dim
    shapes: dict[str, tuple[int, ...]] = {"char_embed": (NUM_SYMBOLS, d)}
    for i, (w, n) in enumerate(c.filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, w, d, n)
        shapes[f"CNN/b_cnn_{i}"] = (n,)
    for k in range(c.n_highway):
        for name, shape in (("W_carry", (F, F)), ("W_transform", (F, F)), ("b_carry", (F,)), ("b_transform", (F,))):
            shapes[f"CNN_high_{k}/{name}"] = shape
    shapes["CNN_proj/W_proj"] = (F, P)
    shapes["CNN_proj/b_proj"] = (P,)
    for direction in (0, 1):
        for layer in range(lstm.n_layers):
            p = lstm_prefix(direction, layer)
            shapes[f"{p}/W_0"] = (2 * P, 4 * C)
            shapes[f"{p}/B"] = (4 * C,)
            shapes[f"{p}/W_P_0"] = (C, P)
    return shapes


#: what h5py raises for a damaged file, a broken (external) link or an unreadable object
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


def open_hdf5(path: str | os.PathLike, what: str = "weight file") -> h5py.File:
    """Open an hdf5 file for reading; every failure is a one-line error naming the file.

    Raises:
        MissingFileError: no such file. WeightFileError: not a regular file, or not readable as hdf5.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingFileError(f"{what} not found: {path}") from None
    except OSError as e:
        raise WeightFileError(f"{path}: cannot be read ({e.strerror}); expected an hdf5 {what}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise WeightFileError(f"{path}: is {kind}; expected an hdf5 {what}")
    try:
        return h5py.File(path, "r")
    except _H5_ERRORS as e:
        raise WeightFileError(f"{path}: not a readable hdf5 file ({e})") from None


def get_dataset(f: h5py.File, path: str, name: str) -> h5py.Dataset | None:
    """Dataset ``name`` of the open file ``f`` (``path`` names it in messages), or None when there is no such
    link. A link that cannot be followed (an external link to a missing or non-hdf5 file, a damaged object
    header) or a group is a :class:`WeightFileError` naming the file and the dataset."""
    try:
        link = f.get(name, getlink=True)
    except _H5_ERRORS as e:
        raise WeightFileError(f"{path}: dataset '{name}' cannot be looked up ({e}); the file may be damaged") from None
    if link is None:
        return None
    try:
        obj = f[name]
    except _H5_ERRORS as e:
        raise WeightFileError(f"{path}: dataset '{name}' cannot be opened ({e}); the file may be damaged or link "
                              f"to a missing file") from None
    if not isinstance(obj, h5py.Dataset):
        raise WeightFileError(f"{path}: '{name}' is a group; expected a dataset")
    return obj


def read_dataset(f: h5py.File, path: str, name: str) -> np.ndarray | None:
    """Dataset ``name`` as a float32 array (None when absent); errors name the file and the dataset."""
    ds = get_dataset(f, path, name)
    if ds is None:
        return None
    if not np.issubdtype(ds.dtype, np.floating):
        raise WeightFileError(f"{path}: dataset '{name}' expected floating point data, found {ds.dtype}")
    try:
        return np.asarray(ds[...], dtype=np.float32)
    except _H5_ERRORS as e:
        raise WeightFileError(f"{path}: dataset '{name}' cannot be read ({e}); the file may be damaged") from None


def _optional(options: ElmoOptions) -> set[str]:
    c = options.char_cnn
    assert c is not None
    return {"CNN_proj/W_proj", "CNN_proj/b_proj"} if c.n_filters == options.lstm.projection_dim else set()


def read_weights(path: str | os.PathLike, options: ElmoOptions) -> dict[str, np.ndarray]:
    """Read a bilm-tf ``weights.hdf5`` and check every dataset against ``options``.

    Returns:
        dataset name -> float32 array in the stored (TF) orientation. ``CNN_proj/*`` is absent when
        the file omits it (allowed only when F == P).

    Raises:
        FileNotFoundError, WeightFileError: naming the file, the dataset, the expected and found shape.
    """
    path = os.fspath(path)
    shapes = expected_shapes(options)
    optional = _optional(options)
    out: dict[str, np.ndarray] = {}
    with open_hdf5(path) as f:
        if optional and any(get_dataset(f, path, name) is not None for name in optional):
            optional = set()  # present at all -> must be complete and well-shaped
        for name, shape in shapes.items():
            ds = get_dataset(f, path, name)
            if ds is None:
                if name in optional:
                    continue
                raise WeightFileError(f"{path}: dataset '{name}' is missing (expected shape {shape})")
            if tuple(ds.shape) != shape:
                raise WeightFileError(f"{path}: dataset '{name}' expected shape {shape}, found {tuple(ds.shape)}")
            out[name] = read_dataset(f, path, name)  # type: ignore[assignment]
            check_finite(out[name], f"{path}: dataset '{name}'")
    return out


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise :class:`WeightFileError` if ``array`` holds NaN or +-Inf (``what`` names file and dataset).

    One pass over the array (about 0.1 s for the 93.6M parameters of the original model).
    """
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise WeightFileError(f"{what} holds {len(bad)} non-finite values (NaN or Inf; first at index {first}, "
                              f"value {array[first]}); expected finite numbers (a corrupted or diverged model?)")


def create_h5(raw: IO[bytes]) -> h5py.File:
    """A new hdf5 file written through the Python file object ``raw`` (opened ``"w+b"``).

    With HDF5's own file driver a failed write (a full disk) leaves the library in a state that crashes the
    process with SIGSEGV (h5py 3.16 / HDF5 2.0: at the next flush, close or garbage collection, often after the
    error was reported), so no ``except`` can keep the process alive. Through a Python file object every write
    is Python's ``raw.write``: a failure raises ``OSError`` ("No space left on device", "File too large") inside
    h5py, which reports it as an ordinary exception. Slower than the native driver on large datasets, which
    writing a model can afford.
    """
    return h5py.File(raw, "w")


def _atomic_h5(path: str | os.PathLike, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w+b") as raw:
        with create_h5(raw) as f:
            for name, array in arrays:
                f.create_dataset(name, data=np.asarray(array, dtype=np.float32))
        raw.flush()


def h5_size_estimate(arrays: Iterable[np.ndarray]) -> int:
    """Bytes an hdf5 file of these float32 datasets takes, at most (data + a few KB of metadata per dataset)."""
    return sum(int(np.asarray(a).size) * 4 + 4096 for a in arrays) + 8192


def write_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write datasets (name -> array, TF orientation) to a bilm-tf ``weights.hdf5``, atomically."""
    _atomic_h5(path, sorted(weights.items()))


def read_softmax_weights(path: str | os.PathLike, projection_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``softmax/W`` (V, P) and ``softmax/b`` (V,) from a softmax weight file."""
    path = os.fspath(path)
    with open_hdf5(path, "softmax weight file") as f:
        arrays = []
        for name in ("softmax/W", "softmax/b"):
            array = read_dataset(f, path, name)
            if array is None:
                raise WeightFileError(f"{path}: dataset '{name}' is missing")
            arrays.append(array)
        W, b = arrays
    if W.ndim != 2 or (projection_dim is not None and W.shape[1] != projection_dim):
        raise WeightFileError(f"{path}: dataset 'softmax/W' expected shape (V, {projection_dim}), found {W.shape}")
    if b.shape != (W.shape[0],):
        raise WeightFileError(f"{path}: dataset 'softmax/b' expected shape ({W.shape[0]},), found {b.shape}")
    check_finite(W, f"{path}: dataset 'softmax/W'")
    check_finite(b, f"{path}: dataset 'softmax/b'")
    return W, b


def write_softmax_weights(path: str | os.PathLike, W: np.ndarray, b: np.ndarray) -> None:
    """Write ``softmax/W`` and ``softmax/b`` atomically."""
    _atomic_h5(path, [("softmax/W", W), ("softmax/b", b)])
