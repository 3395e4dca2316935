"""One optimisation step: :class:`Trainer` (Adagrad, initial accumulator 1.0, global-norm clipping, carried
LSTM states, sampler RNG) and :class:`StepResult`."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.adagrad import adagrad

from ..data import Batch
from ..nn.softmax import log_uniform_sample
from .config import TrainConfig
from .model import LanguageModel

__all__ = ["DenseFusedAdagrad", "Trainer", "StepResult", "derive_seed"]

logger = logging.getLogger(__name__)


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


class DenseFusedAdagrad(torch.optim.Adagrad):
    """``torch.optim.Adagrad`` whose dense float32 CPU gradients are applied by torch's fused CPU kernel.

    The unfused step makes four passes over every parameter (``sum += g²``, ``sqrt`` into a new tensor, ``+ eps``,
    ``p += -lr g / std``); the fused kernel makes one, which on the original model's ~95M dense parameters saves
    several hundred ms per step on two cores. Sparse row gradients on the CPU (the sampled softmax's rows) update
    the touched rows only (:func:`_sparse_rows_adagrad`, bit-identical to torch's); other devices and dtypes take
    torch's standard single-tensor path. State (``sum``, ``step``) and ``state_dict`` are exactly
    ``Adagrad``'s, so checkpoints load either way; the update rounds ``lr * g / std`` in another order than the
    unfused path (a float32 ulp of the update), identically at any thread count.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            fused: tuple[list, list, list, list] = ([], [], [], [])
            plain: tuple[list, list, list, list] = ([], [], [], [])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                dense_cpu = (not p.grad.is_sparse and p.device.type == "cpu" and p.dtype == torch.float32
                             and state["step"].device == p.device)
                for lst, t in zip(fused if dense_cpu else plain, (p, p.grad, state["sum"], state["step"])):
                    lst.append(t)
            options = dict(lr=group["lr"], weight_decay=group["weight_decay"], lr_decay=group["lr_decay"],
                           eps=group["eps"], maximize=group["maximize"], differentiable=False, has_complex=False,
                           foreach=False)
            if fused[0]:
                adagrad(*fused, fused=True, has_sparse_grad=False, **options)
            if plain[0]:
                sparse = [k for k, g in enumerate(plain[1]) if _sparse_rows_ok(g, group)]
                for k in sparse:
                    _sparse_rows_adagrad(*(lst[k] for lst in plain), group["lr"], group["lr_decay"], group["eps"])
                rest = [[t for k, t in enumerate(lst) if k not in sparse] for lst in plain]
                if rest[0]:
                    adagrad(*rest, fused=False, has_sparse_grad=any(g.is_sparse for g in rest[1]), **options)
        return loss


def _sparse_rows_ok(grad: torch.Tensor, group: dict) -> bool:
    return (grad.is_sparse and grad.device.type == "cpu" and grad.sparse_dim() == 1 and group["weight_decay"] == 0
            and not group["maximize"])


@torch.no_grad()
def _sparse_rows_adagrad(param: torch.Tensor, grad: torch.Tensor, state_sum: torch.Tensor, step_t: torch.Tensor,
                         lr: float, lr_decay: float, eps: float) -> None:
    """torch's single-tensor Adagrad step for a sparse row gradient (the sampled softmax's ``(V, P)`` weight), on the
    touched rows only: ``sum[r] += g²``, ``p[r] -= clr g / (sqrt(sum[r]) + eps)``. Bit-identical to torch's (checked
    in tests/test_train_speedpaths.py); torch adds its sparse updates to the dense ``(V, P)`` state through ops that
    pass over every row (2 x 51 MB per step for the small model's 100k x 128 softmax)."""
    step_t += 1
    clr = lr / (1 + (float(step_t) - 1) * lr_decay)
    grad = grad.coalesce()  # the update is non-linear: one value per row
    rows, values = grad._indices()[0], grad._values()
    state_sum.index_add_(0, rows, values.pow(2))
    std = state_sum.index_select(0, rows).sqrt_().add_(eps)
    param.index_add_(0, rows, values / std, alpha=-clr)


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
        self.optimizer = DenseFusedAdagrad(model.parameters(), lr=config.learning_rate,
                                           initial_accumulator_value=config.initial_accumulator, eps=0.0)
        self.sampler = torch.Generator().manual_seed(derive_seed(config.seed, rank, 2))
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


def derive_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)

