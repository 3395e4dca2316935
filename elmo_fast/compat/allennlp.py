"""AllenNLP's ELMo names and signatures in one import path.

Replace, in an import line::

    from allennlp.modules.elmo import Elmo, _ElmoBiLm, _ElmoCharacterEncoder, batch_to_ids
    from allennlp.modules.elmo_lstm import ElmoLstm
    from allennlp.modules.token_embedders import ElmoTokenEmbedder
    from allennlp.commands.elmo import ElmoEmbedder, elmo_command      # AllenNLP <= 0.9
    from allennlp.nn.util import remove_sentence_boundaries, add_sentence_boundary_token_ids

by ``from elmo_fast.compat.allennlp import ...`` with the same names. The numbers are AllenNLP's (stateful by
default, same BOS/EOS handling, same slot semantics for carried states); what still differs is listed in
the README's compatibility table (parameter names and shapes follow the bilm-tf files, not AllenNLP's
``Linear`` layers). As in AllenNLP, the options and weight files may be URLs (AllenNLP's own, e.g.
``https://allennlp.s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_options.json``),
downloaded once into a cache; also public model names (``"original"``, ...): see :mod:`elmo_fast.hub`.

Floating-point order: every class here (and :func:`elmo_command`) defaults to ``order="allennlp"``
(:mod:`elmo_fast.numerics`): the fast path then computes in AllenNLP's order of operations, so that long
sentences stay within AllenNLP's own thread-to-thread noise of its numbers (``benchmarks/allennlp_parity.py``),
at a speed cost on large models. ``order="fast"`` (the native API's default) is faster; ``order=None`` keeps the
caller's setting (:func:`elmo_fast.numerics.use`). Each class also takes ``precision=`` as the native API.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import hub, numerics
from ..chars import batch_to_ids
from ..embedder import ElmoEmbedder as _NativeElmoEmbedder
from ..embedding import embed_to_hdf5
from ..errors import MissingFileError, UserError
from ..nn.bilm import add_sentence_boundaries, remove_sentence_boundaries
from ..nn.elmo import Elmo as _NativeElmo
from ..nn.scalar_mix import ScalarMix
from ..runtime import configure_threads
from .modules import COMPAT_ORDER, ElmoLstm, _ElmoCharacterEncoder
from .modules import _ElmoBiLm as _BiLmFromFiles

__all__ = ["COMPAT_ORDER", "Elmo", "_ElmoBiLm", "_ElmoCharacterEncoder", "ElmoLstm", "ElmoTokenEmbedder",
           "ElmoEmbedder", "ScalarMix", "batch_to_ids", "remove_sentence_boundaries", "add_sentence_boundaries",
           "add_sentence_boundary_token_ids", "elmo_command", "empty_embedding", "DEFAULT_BATCH_SIZE"]

#: AllenNLP's ``allennlp.commands.elmo.DEFAULT_BATCH_SIZE``
DEFAULT_BATCH_SIZE = 64


def add_sentence_boundary_token_ids(tensor: torch.Tensor, mask: torch.Tensor, sentence_begin_token: Any,
                                    sentence_end_token: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """AllenNLP's name for :func:`elmo_fast.nn.bilm.add_sentence_boundaries`: ``(B, T)`` ids or ``(B, T, D)``
    values and their ``(B, T)`` mask -> ``(B, T + 2, ...)`` with the begin/end values and the new bool mask."""
    begin = torch.as_tensor(sentence_begin_token, dtype=tensor.dtype, device=tensor.device)
    end = torch.as_tensor(sentence_end_token, dtype=tensor.dtype, device=tensor.device)
    return add_sentence_boundaries(tensor, mask.bool(), begin, end)


class _ElmoBiLm(_BiLmFromFiles):
    """AllenNLP's ``_ElmoBiLm`` (see :class:`elmo_fast.compat.modules._ElmoBiLm`), in AllenNLP's floating-point
    order unless ``order=`` says otherwise."""

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, requires_grad: bool = False,
                 vocab_to_cache: list[str] | None = None, *, stateful: bool = True, backend: str | None = None,
                 precision: str | None = None, order: str | None = COMPAT_ORDER) -> None:
        super().__init__(options_file, weight_file, requires_grad=requires_grad, vocab_to_cache=vocab_to_cache,
                         stateful=stateful, backend=backend, precision=precision, order=order)


class Elmo(_NativeElmo):
    """AllenNLP's ``Elmo`` (see :class:`elmo_fast.Elmo`, same arguments), in AllenNLP's floating-point order unless
    ``order=`` says otherwise; ``_elmo_lstm`` is a :class:`_ElmoBiLm` of this module (with ``module=``, the
    given module gets this ``precision`` / ``order``; ``order=None`` leaves its own)."""

    def __init__(self, options_file: str | os.PathLike | None, weight_file: str | os.PathLike | None,
                 num_output_representations: int, requires_grad: bool = False, do_layer_norm: bool = False,
                 dropout: float = 0.5, vocab_to_cache: list[str] | None = None,
                 keep_sentence_boundaries: bool = False, scalar_mix_parameters: list[float] | None = None,
                 module: nn.Module | None = None, *, stateful: bool = True, backend: str | None = None,
                 precision: str | None = None, order: str | None = COMPAT_ORDER) -> None:
        if module is None and options_file is not None and weight_file is not None:
            # built here, so that the cached vectors of vocab_to_cache are computed in this order too
            numerics.check(precision, order)
            module = _ElmoBiLm(options_file, weight_file, requires_grad=requires_grad, vocab_to_cache=vocab_to_cache,
                               stateful=stateful, backend=backend, precision=precision, order=order)
            vocab_to_cache = None
        elif module is not None:  # set before the native Elmo computes vocab_to_cache's vectors with it
            numerics.configure(module, precision, order)
        super().__init__(options_file, weight_file, num_output_representations, requires_grad=requires_grad,
                         do_layer_norm=do_layer_norm, dropout=dropout, vocab_to_cache=vocab_to_cache,
                         keep_sentence_boundaries=keep_sentence_boundaries,
                         scalar_mix_parameters=scalar_mix_parameters, module=module, stateful=stateful,
                         backend=backend, precision=precision, order=order)


class ElmoEmbedder(_NativeElmoEmbedder):
    """AllenNLP's ``ElmoEmbedder`` (see :class:`elmo_fast.ElmoEmbedder`, same arguments), in AllenNLP's
    floating-point order unless ``order=`` says otherwise."""

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, cuda_device: int = -1,
                 *, stateful: bool = True, batch_size: int = 64, backend: str | None = None,
                 precision: str | None = None, order: str | None = COMPAT_ORDER) -> None:
        super().__init__(options_file, weight_file, cuda_device, stateful=stateful, batch_size=batch_size,
                         backend=backend, precision=precision, order=order)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, cuda_device: int = -1, stateful: bool = True,
                        batch_size: int = 64, backend: str | None = None, precision: str | None = None,
                        order: str | None = COMPAT_ORDER) -> "ElmoEmbedder":
        """As :meth:`elmo_fast.ElmoEmbedder.from_pretrained`, in AllenNLP's order by default."""
        return super().from_pretrained(path, cuda_device=cuda_device, stateful=stateful, batch_size=batch_size,
                                       backend=backend, precision=precision, order=order)


class ElmoTokenEmbedder(nn.Module):
    """AllenNLP's ``ElmoTokenEmbedder``: one ELMo mix, optionally projected to ``projection_dim``.

    Args (AllenNLP's, same order): options_file, weight_file (paths, URLs or public model names: see
        :mod:`elmo_fast.hub`), do_layer_norm, dropout,
        requires_grad, projection_dim (a ``Linear(2P, projection_dim)`` with bias after the mix),
        vocab_to_cache, scalar_mix_parameters. Extra keywords ``stateful``, ``backend``, ``precision`` and
        ``order`` (default ``"allennlp"``) as :class:`Elmo`.

    ``forward(elmo_tokens (B, T, 50) or (B, N, T, 50), word_inputs=None) -> (..., T, output_dim)``.
    """

    def __init__(self, options_file: str | os.PathLike, weight_file: str | os.PathLike, do_layer_norm: bool = False,
                 dropout: float = 0.5, requires_grad: bool = False, projection_dim: int | None = None,
                 vocab_to_cache: list[str] | None = None, scalar_mix_parameters: list[float] | None = None,
                 *, stateful: bool = True, backend: str | None = None, precision: str | None = None,
                 order: str | None = COMPAT_ORDER) -> None:
        super().__init__()
        self._elmo = Elmo(options_file, weight_file, 1, do_layer_norm=do_layer_norm, dropout=dropout,
                          requires_grad=requires_grad, vocab_to_cache=vocab_to_cache,
                          scalar_mix_parameters=scalar_mix_parameters, stateful=stateful, backend=backend,
                          precision=precision, order=order)
        if projection_dim is not None and (isinstance(projection_dim, bool) or not isinstance(projection_dim, int)
                                           or projection_dim < 0):
            raise ValueError(f"projection_dim: expected a positive integer or None, found {projection_dim!r}")
        if projection_dim:
            self._projection: nn.Linear | None = nn.Linear(self._elmo.get_output_dim(), projection_dim)
            self.output_dim = projection_dim
        else:
            self._projection = None
            self.output_dim = self._elmo.get_output_dim()

    def get_output_dim(self) -> int:
        return self.output_dim

    def reset_states(self) -> None:
        self._elmo.reset_states()

    def forward(self, elmo_tokens: torch.Tensor, word_inputs: torch.Tensor | None = None) -> torch.Tensor:
        rep = self._elmo(elmo_tokens, word_inputs)["elmo_representations"][0]
        return self._projection(rep) if self._projection is not None else rep


def empty_embedding() -> np.ndarray:
    """AllenNLP's ``allennlp.commands.elmo.empty_embedding``: ``(3, 0, 1024)`` float zeros."""
    return np.zeros((3, 0, 1024))


def _path_of(value: Any, what: str) -> str:
    """A path from an AllenNLP namespace field (a path string or an open file, as ``argparse.FileType`` gives)."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    name = getattr(value, "name", None)
    if isinstance(name, str) and not name.startswith("<"):
        return name
    raise ValueError(f"{what}: expected a file path (standard input/output is not supported), found {value!r}")


def _model_file(args: argparse.Namespace, field: str, kind: str) -> str:
    """The local path of the namespace's ``options_file`` / ``weight_file`` (a URL or public model name is
    downloaded once into the cache); a regular file, else an error naming the field."""
    try:
        path = os.fspath(hub.resolve(os.fspath(getattr(args, field)), kind))  # type: ignore[arg-type]
    except hub.DownloadError as e:
        raise hub.DownloadError(f"{field}: {e}") from None
    if not os.path.exists(path):
        raise MissingFileError(f"{field} {path}: no such file")
    if not os.path.isfile(path):  # read whole and hashed: a directory, FIFO or device would never do
        raise UserError(f"{field} {path}: not a regular file; expected the model's {kind} file")
    return path


def _batch_size(args: argparse.Namespace) -> int:
    """The namespace's ``batch_size`` read as the command line reads it (``int`` of its text), positive."""
    value = getattr(args, "batch_size", DEFAULT_BATCH_SIZE)
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if size < 1:
        raise UserError(f"elmo_command: 'batch_size' expected a positive integer, found {value!r}")
    return size


def elmo_command(args: argparse.Namespace) -> int:
    """AllenNLP's ``allennlp.commands.elmo.elmo_command``: what ``elmo-fast embed`` does, for an AllenNLP namespace.

    Fields read (AllenNLP's names): ``input_file``, ``output_file``, ``all`` / ``top`` / ``average``,
    ``options_file``, ``weight_file`` (paths, URLs or public model names: :mod:`elmo_fast.hub`), ``batch_size``
    (default 64), ``cuda_device`` (default -1), ``forget_sentences``, ``use_sentence_keys``. As AllenNLP, an
    existing output file is replaced. The model runs in AllenNLP's floating-point order (:data:`COMPAT_ORDER`)
    unless the namespace has ``order``. Stateful, resumable, with a progress bar and the automatic thread count,
    as the command (:func:`elmo_fast.embedding.embed_to_hdf5` does the work). Returns 0.
    """
    formats = [f for f in ("all", "top", "average") if getattr(args, f, False)]
    if len(formats) != 1:
        raise ValueError(f"elmo_command: exactly one of all/top/average must be set, found {formats or 'none'}")
    for field in ("options_file", "weight_file"):
        if not getattr(args, field, None):
            raise ValueError(f"elmo_command: '{field}' is required (a path, a URL or a public model name)")
    order = getattr(args, "order", COMPAT_ORDER)
    numerics.check(order=order)  # a bad value fails here, naming the field
    input_file = _path_of(args.input_file, "input_file")
    output_file = _path_of(args.output_file, "output_file")
    batch_size = _batch_size(args)
    cuda = int(getattr(args, "cuda_device", -1))
    if cuda >= 0 and not torch.cuda.is_available():  # before the input scan, as the command checks --device
        raise UserError(f"cuda_device={cuda}: CUDA is not available on this machine (use -1 for CPU)")
    options_file = _model_file(args, "options_file", "options")
    weight_file = _model_file(args, "weight_file", "weights")
    configure_threads(None)  # the command's thread policy: automatic unless ELMO_FAST_THREADS fixes it

    def load() -> ElmoEmbedder:  # called by the job after every check and the input scan
        return ElmoEmbedder(options_file, weight_file, cuda_device=cuda, stateful=True, batch_size=batch_size,
                            order=order)

    with numerics.use(order=order):  # anything reading the caller's setting sees the model's order
        embed_to_hdf5(load, input_file, output_file, output_format=formats[0], batch_size=batch_size,
                      stateful=True, forget_sentences=bool(getattr(args, "forget_sentences", False)),
                      use_sentence_keys=bool(getattr(args, "use_sentence_keys", False)), progress=True,
                      overwrite=True, model_files=[options_file, weight_file])
    return 0
