"""biLM training (bilm-tf recipe, docs/numerics.md#training-recipe), single process or ``torchrun`` + DDP, by
responsibility:

* :mod:`.config` - :class:`TrainConfig` (defaults = bilm-tf's; options.json training keys and CLI flags
  override them), :func:`resolve_options`.
* :mod:`.model` - :class:`LanguageModel`: :class:`~elmo_fast.nn.bilm.BiLM` plus one softmax ``(V, P)`` shared
  by both directions; :func:`init_weights`.
* :mod:`.trainer` - :class:`Trainer`: Adagrad (lr 0.2, initial accumulator 1.0), global-norm clipping 10,
  carried LSTM states, sampler RNG; :meth:`Trainer.step` is one optimisation step (what benchmarks call).
* :mod:`.evaluation` - :func:`evaluate_perplexity`, bilm-tf's held-out protocol.
* :mod:`.checkpoints` - atomic, validated ``checkpoint.pt`` files.
* :mod:`.export` - :func:`export_run`, :func:`export_model`, :func:`load_model_dir`.
* :mod:`.loop` - :func:`run_training`: the ``elmo-fast train`` job.

Layering: commands -> this package (jobs) -> model (``elmo_fast.nn``) -> backend -> kernels.
"""
from __future__ import annotations

from .checkpoints import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig, resolve_options
from .evaluation import evaluate_perplexity
from .export import export_model, export_run, load_model_dir
from .loop import run_training
from .model import LanguageModel, init_weights
from .trainer import StepResult, Trainer

__all__ = ["TrainConfig", "LanguageModel", "Trainer", "StepResult", "evaluate_perplexity", "run_training",
           "export_run", "export_model", "load_model_dir", "load_checkpoint", "resolve_options", "CHECKPOINT_NAME",
           "init_weights"]
