"""The thin biLM training loop (bilm-tf recipe, ELMO_SPEC §5), single process or ``torchrun`` + DDP.

Pieces, top to bottom:

* :class:`TrainConfig` - every training setting (defaults = bilm-tf's; options.json training keys and CLI
  flags override them).
* :class:`LanguageModel` - :class:`~elmo_fast.nn.bilm.BiLM` plus one softmax ``(V, P)`` shared by both
  directions; ``forward`` returns the loss of one stateful batch.
* :class:`Trainer` - Adagrad (lr 0.2, initial accumulator 1.0), global-norm clipping 10, carried LSTM
  states, sampler RNG; :meth:`Trainer.step` is one optimisation step on a :class:`~elmo_fast.data.Batch`
  (the function benchmarks call).
* :func:`evaluate_perplexity` - bilm-tf's held-out protocol (batch 256, unroll 1, stateful, full softmax).
* :func:`run_training` - the loop: data, progress bar, periodic evaluation, atomic checkpoints every N
  steps and on SIGINT/SIGTERM, exact ``resume``, DDP under ``torchrun`` (gloo on CPU, nccl on GPU).
* :func:`export_run`, :func:`load_model_dir` - ELMo files out of / models into the loop.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import backend as backends
from .atomic import atomic_path, write_json
from .data import Batch, CorpusError, TrainingBatches, Vocabulary, expand_shards, heldout_batches, iter_shard_sentences
from .nn.bilm import BiLM
from .nn.softmax import full_softmax_loss, log_uniform_expected_count, log_uniform_sample
from .options import ElmoOptions, load_options, options_from_dict, preset
from .weights import read_softmax_weights, read_weights, write_softmax_weights

__all__ = ["TrainConfig", "LanguageModel", "Trainer", "StepResult", "evaluate_perplexity", "run_training",
           "export_run", "load_model_dir", "resolve_options", "CHECKPOINT_NAME", "init_weights"]

logger = logging.getLogger(__name__)

#: below this many training files (but more than one) ``train`` warns about the streams' file order
FEW_SHARDS = 8

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "elmo-fast-checkpoint"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Training settings. Defaults are bilm-tf's; ``None`` = not limited / derived."""

    batch_size: int = 128              # rows per process (bilm-tf: per GPU)
    unroll_steps: int = 20
    n_negative_samples: int = 8192     # per direction per process batch
    sample_softmax: bool = True        # False: full softmax in training (small vocabularies)
    dropout: float = 0.1
    learning_rate: float = 0.2
    initial_accumulator: float = 1.0
    clip_norm: float = 10.0
    seed: int = 0
    max_steps: int | None = None       # None: n_epochs over the corpus (or until --max-minutes)
    max_minutes: float | None = None
    n_epochs: float = 10.0
    checkpoint_every: int = 1250
    eval_every: int | None = None      # steps between held-out evaluations (None: only at the end)
    eval_batch_size: int = 256
    softmax_chunk: int = 16384         # vocabulary rows per chunk of the full softmax
    data_parts: int | None = None      # disjoint corpus parts in the job (None: the world size)
    min_count: int = 1
    max_vocab: int | None = None
    skip_bad_lines: bool = False
    device: str = "cpu"
    backend: str | None = None

    #: options.json training key -> config field
    OPTION_KEYS = {"batch_size": "batch_size", "unroll_steps": "unroll_steps", "dropout": "dropout",
                   "n_negative_samples_batch": "n_negative_samples", "learning_rate": "learning_rate",
                   "all_clip_norm_val": "clip_norm", "sample_softmax": "sample_softmax", "n_epochs": "n_epochs"}

    def apply_options(self, options: ElmoOptions, overridden: Iterable[str] = ()) -> "TrainConfig":
        """Take the training keys of an options.json unless the field was set on the command line."""
        values = {}
        skip = set(overridden)
        for key, field in self.OPTION_KEYS.items():
            if key in options.extra and field not in skip:
                kind = type(getattr(self, field))
                values[field] = kind(options.extra[key])
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        for name in ("batch_size", "unroll_steps", "n_negative_samples", "checkpoint_every", "eval_batch_size",
                     "softmax_chunk", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, found {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= p < 1, found {self.dropout}")
        if self.learning_rate <= 0 or self.clip_norm <= 0:
            raise ValueError("learning_rate and clip_norm must be positive")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps: expected >= 0, found {self.max_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_options(spec: str) -> ElmoOptions:
    """``tiny|small|medium|original`` or a path to an options.json."""
    if os.path.exists(spec) or spec.endswith(".json"):
        return load_options(spec)
    return preset(spec)


# ---------------------------------------------------------------------------------------------- model
def init_weights(bilm: BiLM, softmax_weight: torch.Tensor, softmax_bias: torch.Tensor,
                 generator: torch.Generator) -> None:
    """bilm-tf's from-scratch initialisation (ELMO_SPEC §5), deterministic given ``generator``."""
    enc = bilm.token_encoder
    opts = enc.options
    F_ = opts.n_filters
    P = bilm.options.lstm.projection_dim
    with torch.no_grad():
        enc.char_embed.uniform_(-1.0, 1.0, generator=generator)
        for (w, _), W, b in zip(opts.filters, enc.conv_weights, enc.conv_biases):
            if opts.activation == "relu":
                W.uniform_(-0.05, 0.05, generator=generator)
            else:
                W.normal_(0.0, math.sqrt(1.0 / (w * opts.embedding_dim)), generator=generator)
            b.zero_()
        for hw in enc.highways:
            hw.W_carry.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            hw.W_transform.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            hw.b_carry.fill_(-2.0)
            hw.b_transform.zero_()
        if enc.W_proj is not None:
            enc.W_proj.normal_(0.0, math.sqrt(1.0 / F_), generator=generator)
            enc.b_proj.zero_()
        for direction in bilm.lstm.cells:
            for cell in direction:
                for W in (cell.W_0, cell.W_P_0):  # Glorot uniform (TF's default kernel initializer)
                    limit = math.sqrt(6.0 / (W.shape[0] + W.shape[1]))
                    W.uniform_(-limit, limit, generator=generator)
                cell.B.zero_()
        softmax_weight.normal_(0.0, 1.0 / math.sqrt(P), generator=generator)
        softmax_bias.zero_()


class LanguageModel(nn.Module):
    """The biLM with its shared softmax: what training optimises.

    Args:
        options: model options (``char_cnn`` required).
        vocab_size: V, rows of the softmax.
        backend: op backend of the biLM (see :mod:`elmo_fast.backend`).
        has_projection: whether the token encoder has ``CNN_proj``.
    """

    def __init__(self, options: ElmoOptions, vocab_size: int, backend: str | None = None,
                 has_projection: bool = True) -> None:
        super().__init__()
        self.bilm = BiLM(options, stateful=False, has_projection=has_projection, backend=backend)
        P = options.lstm.projection_dim
        self.softmax_weight = nn.Parameter(torch.empty(vocab_size, P))
        self.softmax_bias = nn.Parameter(torch.empty(vocab_size))
        self.vocab_size = vocab_size
        #: sampled-softmax steps give ``softmax_weight`` a sparse gradient of the touched rows (see
        #: :meth:`_softmax_rows`); the Trainer turns it off under DistributedDataParallel (dense all-reduce)
        self.sparse_softmax_grad = True

    def zero_state(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state ``(h (L, B, 2P), c (L, B, 2C))`` (forward stream | reverse stream halves)."""
        return self.bilm.lstm.zero_state(batch, self.softmax_weight.new_empty(0).to(device))

    def hidden(self, batch: Batch, state: tuple[torch.Tensor, torch.Tensor] | None,
               dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Top-layer outputs of both streams (before output dropout).

        Returns:
            forward ``(B, T, P)``, backward ``(B, T, P)`` (reverse-stream order), final state (detached).
        """
        emb = self.bilm.encode_tokens(batch.token_chars)          # (U, P): each distinct spelling once
        fw_out, bw_out, (h, c) = self.bilm.forward_streams(emb[batch.fw_inputs], emb[batch.bw_inputs], state, dropout)
        return fw_out[-1], bw_out[-1], (h.detach(), c.detach())

    def forward(self, batch: Batch, state: tuple[torch.Tensor, torch.Tensor] | None, dropout: float = 0.0,
                samples: tuple[torch.Tensor, int, torch.Tensor, int] | None = None,
                softmax_chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     tuple[torch.Tensor, torch.Tensor]]:
        """Loss of one batch: ``0.5 * (mean forward loss + mean backward loss)``.

        Args:
            batch: a :class:`~elmo_fast.data.Batch` on the model's device.
            state: carried LSTM state (or None for zeros).
            dropout: on every LSTM input and on the top output before the softmax.
            samples: ``(fw_ids (S,), fw_tries, bw_ids (S,), bw_tries)`` for the sampled softmax, or None
                for the full softmax.

        Returns:
            ``(loss, forward loss, backward loss, new state)``; losses are scalars.
        """
        fw_top, bw_top, new_state = self.hidden(batch, state, dropout)
        streams = ((fw_top, batch.fw_targets.reshape(-1)), (bw_top, batch.bw_targets.reshape(-1)))
        if samples is not None:
            weight, bias, local = self._softmax_rows([t for _, t in streams]
                                                     + [samples[0].to(fw_top.device), samples[2].to(fw_top.device)])
        losses = []
        for d, (top, t) in enumerate(streams):
            if dropout > 0.0:
                top = F.dropout(top, dropout, training=True)
            h = top.reshape(-1, top.shape[-1])
            if samples is None:
                losses.append(full_softmax_loss(h, t, self.softmax_weight, self.softmax_bias, softmax_chunk).mean())
            else:
                ids, tries = samples[2 * d], int(samples[2 * d + 1])
                V, S = self.vocab_size, ids.numel()
                q_t = log_uniform_expected_count(t, tries, V, S).to(h.device)
                q_s = log_uniform_expected_count(ids, tries, V, S).to(h.device)
                losses.append(self.softmax_op("sampled_softmax_loss", h)(
                    h, local[d], weight, bias, local[2 + d], q_t, q_s).mean())
        return 0.5 * (losses[0] + losses[1]), losses[0].detach(), losses[1].detach(), new_state

    def _softmax_rows(self, id_sets: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The softmax rows a sampled step touches, gathered once.

        Args:
            id_sets: int64 vocabulary ids (targets and samples of both directions).

        Returns:
            ``weight`` ``(R, P)`` and ``bias`` ``(R,)`` of the ``R`` distinct ids, and each id set mapped to
            row indices into them. With :attr:`sparse_softmax_grad` the weight rows come from a sparse
            embedding lookup, so ``softmax_weight.grad`` is a sparse ``(V, P)`` tensor with ``R`` rows
            instead of a dense one (bilm-tf's ``IndexedSlices``); Adagrad then updates only those rows,
            which is exactly the dense update (untouched rows get a zero gradient: no change).
        """
        rows, inverse = torch.unique(torch.cat(id_sets), return_inverse=True)
        local = list(inverse.split([t.numel() for t in id_sets]))
        if self.sparse_softmax_grad:
            weight = F.embedding(rows, self.softmax_weight, sparse=True)
        else:
            weight = self.softmax_weight.index_select(0, rows)
        return weight, self.softmax_bias.index_select(0, rows), local

    def softmax_op(self, op: str, like: torch.Tensor) -> Any:
        """The backend implementation of ``sampled_softmax_loss`` or ``full_softmax_loss`` (evaluation) for
        tensors like ``like``: Triton on CUDA, the reference on CPU, or what ``bilm.backend`` /
        ``ELMO_FAST_BACKEND`` asks for. Training with the *full* softmax always uses the reference's
        chunked autograd function (the Triton full-softmax kernel is forward-only)."""
        return backends.get_op(self.bilm.backend_name(like.device, op), op)

    # ---- ELMo files
    def load_elmo_files(self, weight_file: str, softmax_file: str | None = None) -> None:
        """Copy a bilm-tf ``weights.hdf5`` (and optionally softmax weights) into the model."""
        self.bilm.load_bilm_tf_weights(read_weights(weight_file, self.bilm.options))
        if softmax_file is not None:
            W, b = read_softmax_weights(softmax_file, self.bilm.options.lstm.projection_dim)
            if W.shape[0] != self.vocab_size:
                raise ValueError(f"{softmax_file}: dataset 'softmax/W' has {W.shape[0]} rows, the vocabulary has "
                                 f"{self.vocab_size} tokens")
            with torch.no_grad():
                self.softmax_weight.copy_(torch.from_numpy(W))
                self.softmax_bias.copy_(torch.from_numpy(b))


# ---------------------------------------------------------------------------------------------- trainer
@dataclass
class StepResult:
    """What one training step did. ``loss`` is the (sampled) training loss, ``perplexity`` its exp."""

    loss: float
    forward_loss: float
    backward_loss: float
    grad_norm: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))


def _clip_global_norm(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """TensorFlow's ``clip_by_global_norm``: scale every gradient by ``max_norm / max(norm, max_norm)``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g) for g in grads]))
    if norm > max_norm:
        scale = max_norm / norm
        for g in grads:
            g.mul_(scale)
    return float(norm)


class Trainer:
    """Optimizer, carried LSTM states and sampler RNG around a :class:`LanguageModel`.

    Usage (benchmarks call exactly this)::

        model = LanguageModel(options, len(vocab)); init_weights(...)
        trainer = Trainer(model, TrainConfig(batch_size=B, unroll_steps=T))
        result = trainer.step(batch)     # batch: elmo_fast.data.Batch (B rows x T steps, both directions)

    :meth:`step` = forward (both streams from the carried state) -> loss x unroll_steps -> backward (DDP
    averages gradients when ``ddp_model`` is given) -> global-norm clip -> Adagrad -> carry the new state.

    Args:
        model: the language model (already on its device).
        config: settings (dropout, negatives, lr, clipping, ...).
        ddp_model: the DistributedDataParallel wrapper of ``model`` (None in one process).
        rank: this process's rank (seeds the sampler so ranks draw different negatives).
    """

    def __init__(self, model: LanguageModel, config: TrainConfig, ddp_model: nn.Module | None = None,
                 rank: int = 0) -> None:
        self.model = model
        self.forward_model = ddp_model if ddp_model is not None else model
        model.sparse_softmax_grad = ddp_model is None
        if model.sparse_softmax_grad:
            # Adagrad builds sparse updates internally; say explicitly that torch should not validate them
            # (its default), which also silences torch's warning about the implicit default
            torch.sparse.check_sparse_tensor_invariants.disable()
        self.config = config
        self.device = model.softmax_weight.device
        self.optimizer = torch.optim.Adagrad(model.parameters(), lr=config.learning_rate,
                                             initial_accumulator_value=config.initial_accumulator, eps=0.0)
        self.sampler = torch.Generator().manual_seed(_derive_seed(config.seed, rank, 2))
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_negative = min(config.n_negative_samples, model.vocab_size)
        if config.sample_softmax and config.n_negative_samples > model.vocab_size:
            logger.warning("n_negative_samples %d > vocabulary size %d: sampling all %d words",
                           config.n_negative_samples, model.vocab_size, model.vocab_size)

    def step(self, batch: Batch) -> StepResult:
        """One optimisation step on ``batch`` (CPU or device tensors); returns its loss and gradient norm."""
        cfg = self.config
        self.model.train()
        batch = batch.to(self.device)
        if self.state is None or self.state[0].shape[1] != batch.fw_targets.shape[0]:
            self.state = self.model.zero_state(batch.fw_targets.shape[0], self.device)
        samples = None
        if cfg.sample_softmax:
            fw_ids, fw_tries = log_uniform_sample(self.model.vocab_size, self.n_negative, self.sampler)
            bw_ids, bw_tries = log_uniform_sample(self.model.vocab_size, self.n_negative, self.sampler)
            samples = (fw_ids, fw_tries, bw_ids, bw_tries)
        loss, fw_loss, bw_loss, new_state = self.forward_model(batch, self.state, cfg.dropout, samples,
                                                               cfg.softmax_chunk)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * cfg.unroll_steps).backward()
        norm = _clip_global_norm(list(self.model.parameters()), cfg.clip_norm)
        self.optimizer.step()
        self.state = new_state
        return StepResult(float(loss.detach()), float(fw_loss), float(bw_loss), norm, batch.n_tokens)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state (shared by all ranks) - per-rank state is in :meth:`rank_state`."""
        return {"optimizer": self.optimizer.state_dict()}

    def rank_state(self) -> dict[str, Any]:
        """This rank's RNGs and carried LSTM state (CPU tensors)."""
        out: dict[str, Any] = {"torch_rng": torch.get_rng_state(), "sampler_rng": self.sampler.get_state()}
        if self.device.type == "cuda":
            out["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.state is not None:
            out["lstm_h"], out["lstm_c"] = self.state[0].cpu(), self.state[1].cpu()
        return out

    def load_rank_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch_rng"])
        self.sampler.set_state(state["sampler_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if "lstm_h" in state:
            self.state = (state["lstm_h"].to(self.device), state["lstm_c"].to(self.device))


def _derive_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_perplexity(model: LanguageModel, vocab: Vocabulary, heldout: str, batch_size: int = 256,
                        unroll_steps: int = 1, softmax_chunk: int = 16384, progress: bool = False,
                        max_batches: int | None = None) -> dict[str, Any]:
    """Held-out perplexity with bilm-tf's protocol.

    The file is read in order by a forward and a reverse stream of ``batch_size`` rows x ``unroll_steps``
    (stateful from zero, no dropout, full softmax); the incomplete last batch is dropped. Per batch the
    forward and backward mean losses are averaged; ppl = exp(mean over batches).

    Returns:
        ``{"forward_perplexity", "backward_perplexity", "perplexity" (average), "batches", "tokens"}``.
    """
    if len(vocab) != model.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} tokens, the model's softmax {model.vocab_size} rows")
    model.eval()
    device = model.softmax_weight.device
    state = model.zero_state(batch_size, device)
    fw_total = bw_total = 0.0
    n = 0
    from tqdm import tqdm
    bar = tqdm(desc="evaluating", unit="tok", unit_scale=True, disable=not progress)
    for batch in heldout_batches(heldout, vocab, batch_size, unroll_steps):
        batch = batch.to(device)
        fw_top, bw_top, state = model.hidden(batch, state)
        P = fw_top.shape[-1]
        full_softmax = model.softmax_op("full_softmax_loss", fw_top)
        fw = full_softmax(fw_top.reshape(-1, P), batch.fw_targets.reshape(-1), model.softmax_weight,
                          model.softmax_bias, softmax_chunk).mean()
        bw = full_softmax(bw_top.reshape(-1, P), batch.bw_targets.reshape(-1), model.softmax_weight,
                          model.softmax_bias, softmax_chunk).mean()
        fw_total += float(fw)
        bw_total += float(bw)
        n += 1
        bar.update(batch.n_tokens)
        if max_batches is not None and n >= max_batches:
            break
    bar.close()
    if n == 0:
        raise CorpusError(f"{heldout}: too little text for one evaluation batch of {batch_size} rows x "
                          f"{unroll_steps} steps (use a smaller --eval-batch-size / --batch-size)")
    fw_mean, bw_mean = fw_total / n, bw_total / n
    return {"forward_perplexity": math.exp(fw_mean), "backward_perplexity": math.exp(bw_mean),
            "perplexity": math.exp(0.5 * (fw_mean + bw_mean)), "forward_loss": fw_mean, "backward_loss": bw_mean,
            "batches": n, "tokens": n * batch_size * unroll_steps, "heldout": os.fspath(heldout)}


# ---------------------------------------------------------------------------------------------- files
def _checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_NAME)


def _atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` and check its format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an elmo-fast training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')}, this elmo-fast reads {CHECKPOINT_VERSION}")
    return ckpt


def _model_from_checkpoint(ckpt: dict[str, Any], backend: str | None = None) -> LanguageModel:
    options = options_from_dict(ckpt["options"], source="checkpoint options")
    has_proj = any(k.endswith("W_proj") for k in ckpt["model"])
    model = LanguageModel(options, int(ckpt["vocab_size"]), backend=backend, has_projection=has_proj)
    model.load_state_dict(ckpt["model"])
    return model


def load_model_dir(model_dir: str, backend: str | None = None,
                   need_softmax: bool = True) -> tuple[LanguageModel, Vocabulary | None, bool]:
    """A run directory (``checkpoint.pt`` + ``vocab.txt``) or an ELMo export (``options.json``,
    ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``) -> (model, vocabulary, has_softmax).

    With ``need_softmax=False`` an export without softmax weights/vocab loads too (softmax left
    uninitialised, vocabulary None)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    vocab_file = os.path.join(model_dir, "vocab.txt")
    ckpt_file = _checkpoint_path(model_dir)
    if os.path.exists(ckpt_file):
        ckpt = load_checkpoint(ckpt_file)
        vocab = Vocabulary.from_file(vocab_file)
        if vocab.digest() != ckpt["vocab_digest"]:
            raise ValueError(f"{vocab_file} does not match the vocabulary {ckpt_file} was trained with")
        return _model_from_checkpoint(ckpt, backend), vocab, True
    opt_file, w_file = os.path.join(model_dir, "options.json"), os.path.join(model_dir, "weights.hdf5")
    sm_file = os.path.join(model_dir, "softmax_weights.hdf5")
    for f in (opt_file, w_file):
        if not os.path.exists(f):
            raise FileNotFoundError(f"{model_dir}: neither a run directory ({CHECKPOINT_NAME}) nor ELMo files "
                                    f"({os.path.basename(f)} is missing)")
    has_softmax = os.path.exists(sm_file) and os.path.exists(vocab_file)
    if need_softmax and not has_softmax:
        missing = [os.path.basename(f) for f in (sm_file, vocab_file) if not os.path.exists(f)]
        raise FileNotFoundError(f"{model_dir}: {', '.join(missing)} missing (perplexity needs the softmax weights "
                                f"and the vocabulary)")
    options = load_options(opt_file)
    weights = read_weights(w_file, options)
    vocab = Vocabulary.from_file(vocab_file) if has_softmax else None
    model = LanguageModel(options, len(vocab) if vocab else 1, backend=backend,
                          has_projection="CNN_proj/W_proj" in weights)
    model.bilm.load_bilm_tf_weights(weights)
    if has_softmax:
        model.load_elmo_files(w_file, sm_file)
    return model, vocab, has_softmax


def export_model(model: LanguageModel, vocab: Vocabulary, out_dir: str, extra: dict[str, Any] | None = None) -> None:
    """Write ``options.json`` (``n_characters`` 262), ``weights.hdf5``, ``softmax_weights.hdf5``, ``vocab.txt``."""
    os.makedirs(out_dir, exist_ok=True)
    options = model.bilm.options
    assert options.char_cnn is not None
    options = dataclasses.replace(options, char_cnn=dataclasses.replace(options.char_cnn, n_characters=262),
                                  extra={**options.extra, **(extra or {})})
    options.save(os.path.join(out_dir, "options.json"))
    from .weights import write_weights
    write_weights(os.path.join(out_dir, "weights.hdf5"), model.bilm.bilm_tf_weights())
    write_softmax_weights(os.path.join(out_dir, "softmax_weights.hdf5"),
                          model.softmax_weight.detach().cpu().numpy(), model.softmax_bias.detach().cpu().numpy())
    vocab.save(os.path.join(out_dir, "vocab.txt"))


def export_run(run_dir: str, out_dir: str) -> dict[str, Any]:
    """``elmo-fast export``: the latest checkpoint of ``run_dir`` -> ELMo files in ``out_dir``."""
    ckpt = load_checkpoint(_checkpoint_path(run_dir))
    vocab_file = os.path.join(run_dir, "vocab.txt")
    vocab = Vocabulary.from_file(vocab_file)
    if vocab.digest() != ckpt["vocab_digest"]:
        raise ValueError(f"{vocab_file} does not match the vocabulary the checkpoint was trained with")
    model = _model_from_checkpoint(ckpt)
    export_model(model, vocab, out_dir)
    return {"step": int(ckpt["step"]), "out_dir": out_dir, "vocab_size": len(vocab)}


# ---------------------------------------------------------------------------------------------- loop
class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal = signum
        logger.warning("received %s: writing a checkpoint at the end of this step",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), dev


def _shape(options: ElmoOptions) -> tuple[Any, ...]:
    c = options.char_cnn
    return options.lstm, dataclasses.replace(c, n_characters=262) if c is not None else None


def _count_tokens(files: Sequence[str], skip_bad_lines: bool) -> int:
    return sum(len(s) for f in files for s in iter_shard_sentences(f, skip_bad_lines=skip_bad_lines))


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    if world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def run_training(train: str | Sequence[str], out_dir: str, options: ElmoOptions, config: TrainConfig, *,
                 heldout: str | None = None, vocab_path: str | None = None, resume: bool = False,
                 init_from: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a biLM; the whole ``elmo-fast train`` command.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function: gradients are averaged by
    DistributedDataParallel, each process reads its own corpus parts, rank 0 writes files and logs.
    ``config.batch_size`` is per process.

    Files in ``out_dir``: ``options.json`` (model + training keys), ``vocab.txt``, ``config.json`` and
    ``checkpoint.pt`` (written atomically every ``checkpoint_every`` steps, at the end and on
    SIGINT/SIGTERM). ``resume=True`` continues from ``checkpoint.pt`` exactly (model, optimizer, data
    position, RNGs, carried LSTM states).

    Returns:
        a summary dict (steps, tokens, seconds, tokens/s, last loss, held-out perplexity if any).
    """
    config.validate()
    rank, world, device = _setup_distributed(config.device)
    is_main = rank == 0
    if not is_main:  # rank 0 logs; the others only warn
        logging.getLogger("elmo_fast").setLevel(logging.WARNING)
    try:
        with _StopFlag() as stop:  # installed first: a signal during setup still ends in a checkpoint
            return _run(train, out_dir, options, config, heldout, vocab_path, resume, init_from, progress,
                        rank, world, device, is_main, stop)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(train: str | Sequence[str], out_dir: str, options: ElmoOptions, config: TrainConfig,
         heldout: str | None, vocab_path: str | None, resume: bool, init_from: str | None, progress: bool,
         rank: int, world: int, device: torch.device, is_main: bool, stop: "_StopFlag") -> dict[str, Any]:
    files = expand_shards(train)
    if is_main and 1 < len(files) < FEW_SHARDS:
        logger.warning("%d training files: the forward and backward streams each read one file at a time in their own "
                       "random order (bilm-tf), so with few files the two LMs spend long stretches on different "
                       "files and each ends fitted to the file it read last. If the files differ in kind "
                       "(e.g. Wikipedia and web text), mix their lines into many shards first (README, Pretraining)",
                       len(files))
    if heldout is not None and not os.path.exists(heldout):
        raise FileNotFoundError(f"held-out file not found: {heldout}")
    ckpt_file = _checkpoint_path(out_dir)
    run_vocab_file = os.path.join(out_dir, "vocab.txt")
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(ckpt_file)
        if int(ckpt["world_size"]) != world:
            raise ValueError(f"{ckpt_file} was written by {ckpt['world_size']} process(es); resume with the same "
                             f"number (found {world})")
    elif os.path.exists(ckpt_file):
        raise ValueError(f"{out_dir} already holds a checkpoint ({CHECKPOINT_NAME}); pass --resume to continue it "
                         f"or choose another --out")
    if is_main:
        os.makedirs(out_dir, exist_ok=True)

    # ---- vocabulary
    if init_from and resume:
        logger.warning("--init-from is ignored with --resume (the checkpoint holds the weights)")
        init_from = None
    init_model: LanguageModel | None = None
    init_vocab: Vocabulary | None = None
    init_has_softmax = False
    if init_from:  # ELMo files (softmax + vocab optional) or another run directory
        init_model, init_vocab, init_has_softmax = load_model_dir(init_from, config.backend, need_softmax=False)
    if resume:
        vocab = Vocabulary.from_file(run_vocab_file)
        if vocab_path is not None and Vocabulary.from_file(vocab_path).digest() != vocab.digest():
            raise ValueError(f"--vocab {vocab_path} differs from the vocabulary of the run ({run_vocab_file})")
        if vocab.digest() != ckpt["vocab_digest"] or len(vocab) != int(ckpt["vocab_size"]):
            raise ValueError(f"{run_vocab_file} ({len(vocab)} tokens) does not match the vocabulary {ckpt_file} "
                             f"was trained with ({ckpt['vocab_size']} tokens)")
    elif vocab_path is not None:
        vocab = Vocabulary.from_file(vocab_path)
    elif init_vocab is not None:
        vocab = init_vocab
    else:
        if is_main:
            logger.info("building the vocabulary from %d file(s)", len(files))
            vocab = Vocabulary.build(files, config.min_count, config.max_vocab, config.skip_bad_lines)
            vocab.save(run_vocab_file)
        if world > 1:
            dist.barrier()
        if not is_main:
            vocab = Vocabulary.from_file(run_vocab_file)
    if is_main and not resume and not (os.path.exists(run_vocab_file)
                                       and Vocabulary.from_file(run_vocab_file).digest() == vocab.digest()):
        vocab.save(run_vocab_file)
    logger.info("vocabulary: %d tokens", len(vocab))

    # ---- options and config
    if resume:
        saved = options_from_dict(ckpt["options"], source=f"{ckpt_file} options")
        if _shape(saved) != _shape(options):
            raise ValueError(f"--options describe a different model shape than {ckpt_file} (checkpoint: lstm "
                             f"{saved.lstm}; given: lstm {options.lstm}); resume with the run's options")
        options = saved
    if init_model is not None:
        init_options = init_model.bilm.options
        if _shape(init_options) != _shape(options):
            logger.info("--init-from: using the model shape of %s", init_from)
        options = dataclasses.replace(init_options, extra={**init_options.extra, **options.extra})
    n_train_tokens = options.extra.get("n_train_tokens")
    if config.max_steps is None and not resume and n_train_tokens is None:
        n_train_tokens = _count_tokens(files, config.skip_bad_lines)
    options = dataclasses.replace(options, extra={**options.extra, "n_tokens_vocab": len(vocab),
                                                  "batch_size": config.batch_size,
                                                  "unroll_steps": config.unroll_steps,
                                                  "n_negative_samples_batch": config.n_negative_samples,
                                                  "dropout": config.dropout, "learning_rate": config.learning_rate,
                                                  "all_clip_norm_val": config.clip_norm,
                                                  "sample_softmax": config.sample_softmax,
                                                  "n_epochs": config.n_epochs, "bidirectional": True,
                                                  **({"n_train_tokens": int(n_train_tokens)} if n_train_tokens else {})})
    max_steps = config.max_steps
    if max_steps is None and config.max_minutes is None:
        if resume and ckpt.get("max_steps") is not None:
            max_steps = int(ckpt["max_steps"])
        else:
            max_steps = max(1, int(config.n_epochs * int(options.extra["n_train_tokens"])
                                   // (config.batch_size * config.unroll_steps * world)))
    if is_main:
        options.save(os.path.join(out_dir, "options.json"))
        write_json(os.path.join(out_dir, "config.json"),
                   {**config.to_dict(), "world_size": world, "train": list(files), "heldout": heldout,
                    "max_steps_resolved": max_steps})

    # ---- model
    if resume:
        model = _model_from_checkpoint(ckpt, config.backend)
    else:
        has_proj = init_model.bilm.token_encoder.W_proj is not None if init_model is not None else True
        model = LanguageModel(options, len(vocab), backend=config.backend, has_projection=has_proj)
        init_weights(model.bilm, model.softmax_weight, model.softmax_bias,
                     torch.Generator().manual_seed(_derive_seed(config.seed, 0)))
        if init_model is not None:
            model.bilm.load_bilm_tf_weights(init_model.bilm.bilm_tf_weights())
            same_vocab = init_vocab is not None and init_vocab.digest() == vocab.digest()
            if init_has_softmax and same_vocab:
                with torch.no_grad():
                    model.softmax_weight.copy_(init_model.softmax_weight)
                    model.softmax_bias.copy_(init_model.softmax_bias)
                logger.info("--init-from: loaded weights, softmax weights and vocabulary of %s", init_from)
            else:
                logger.info("--init-from: loaded the biLM weights of %s; softmax initialised fresh (%s)", init_from,
                            "different vocabulary" if init_has_softmax else "no softmax_weights.hdf5/vocab.txt")
            del init_model
    model.to(device)
    ddp_model = None
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    torch.manual_seed(_derive_seed(config.seed, rank, 1))  # dropout masks
    trainer = Trainer(model, config, ddp_model, rank)

    # ---- data
    parts = config.data_parts or world
    if parts % world:
        raise ValueError(f"--data-parts {parts} is not a multiple of the number of processes ({world})")
    per_rank = parts // world
    data = TrainingBatches(files, vocab, config.batch_size, config.unroll_steps, config.seed, parts,
                           range(rank * per_rank, (rank + 1) * per_rank), skip_bad_lines=config.skip_bad_lines)

    step, tokens_seen = 0, 0
    if resume:
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        rank_state = ckpt["ranks"][rank]
        trainer.load_rank_state(rank_state)
        data.load_state_dict(rank_state["data"])
        step, tokens_seen = int(ckpt["step"]), int(ckpt["tokens"])
        logger.info("resumed %s at step %d", ckpt_file, step)

    def save_checkpoint() -> None:
        mine = {**trainer.rank_state(), "data": data.state_dict()}
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        if is_main:
            _atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
                                "tokens": tokens_seen, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "optimizer": trainer.optimizer.state_dict(), "options": options.to_dict(),
                                "vocab_size": len(vocab), "vocab_digest": vocab.digest(), "world_size": world,
                                "max_steps": max_steps, "config": config.to_dict(), "ranks": gathered}, ckpt_file)
            logger.info("checkpoint: step %d -> %s", step, ckpt_file)

    def evaluate() -> dict[str, Any] | None:
        if heldout is None or not is_main:
            return None
        result = evaluate_perplexity(model, vocab, heldout, config.eval_batch_size, 1, config.softmax_chunk)
        logger.info("step %d held-out perplexity %.2f (forward %.2f, backward %.2f, %d tokens)", step,
                    result["perplexity"], result["forward_perplexity"], result["backward_perplexity"], result["tokens"])
        return result

    from tqdm import tqdm
    start = time.perf_counter()
    deadline = start + 60.0 * config.max_minutes if config.max_minutes is not None else None
    bar = tqdm(total=max_steps, initial=step, unit="step", desc="training", disable=not (progress and is_main),
               dynamic_ncols=True)
    last: StepResult | None = None
    heldout_result = None
    run_tokens = 0
    stopped_by = "max_steps"
    while True:
        done = max_steps is not None and step >= max_steps
        timeout = deadline is not None and time.perf_counter() >= deadline
        if _any_rank(done or timeout or stop.signal is not None, world, device):
            stopped_by = "signal" if stop.signal is not None else "time" if timeout else "max_steps"
            break
        batch = data.next_batch()
        last = trainer.step(batch)
        step += 1
        step_tokens = last.tokens * world
        tokens_seen += step_tokens
        run_tokens += step_tokens
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{last.loss:.3f}", ppl=f"{last.perplexity:.1f}",
                        tok_s=f"{run_tokens / max(elapsed, 1e-9):.0f}", refresh=False)
        if not math.isfinite(last.loss):
            raise RuntimeError(f"step {step}: the loss is {last.loss}; lower --learning-rate or check the data")
        if step % config.checkpoint_every == 0:
            save_checkpoint()
        if config.eval_every and step % config.eval_every == 0:
            heldout_result = evaluate()
    bar.close()
    save_checkpoint()
    elapsed = time.perf_counter() - start
    if heldout is not None and stopped_by != "signal" and not (config.eval_every and step % config.eval_every == 0 and heldout_result):
        heldout_result = evaluate()
    summary = {"step": step, "tokens": tokens_seen, "run_tokens": run_tokens, "seconds": elapsed,
               "tokens_per_second": run_tokens / max(elapsed, 1e-9), "stopped_by": stopped_by,
               "world_size": world, "vocab_size": len(vocab),
               "last_loss": last.loss if last else None, "last_perplexity": last.perplexity if last else None,
               "heldout": heldout_result, "checkpoint": ckpt_file}
    if is_main:
        logger.info("stopped (%s) at step %d: %d tokens in %.1fs (%.0f tokens/s)", stopped_by, step, run_tokens,
                    elapsed, summary["tokens_per_second"])
    if world > 1:
        dist.barrier()
    return summary
