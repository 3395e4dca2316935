"""Compatibility face of :mod:`elmo_fast.training` (the training package): ``from elmo_fast.train import ...``
keeps working for the names that lived here before the split."""
from __future__ import annotations

from .training import (CHECKPOINT_NAME, LanguageModel, StepResult, TrainConfig, Trainer, evaluate_perplexity,
                       export_model, export_run, init_weights, load_checkpoint, load_model_dir, resolve_options,
                       run_training)

__all__ = ["TrainConfig", "LanguageModel", "Trainer", "StepResult", "evaluate_perplexity", "run_training",
           "export_run", "export_model", "load_model_dir", "load_checkpoint", "resolve_options", "CHECKPOINT_NAME",
           "init_weights"]
