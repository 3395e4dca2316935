"""The training run (:func:`run_training`, the whole ``elmo-fast train`` command): run directory, vocabulary,
model, data, the step loop with periodic evaluation and checkpoints, signals, DDP under ``torchrun``."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .. import progress
from ..atomic import FileLock, json_text
from ..data import TrainingBatches, Vocabulary, check_readable_file, expand_shards, iter_shard_sentences
from ..errors import MissingFileError, UserError
from ..options import ElmoOptions, load_options, options_from_dict
from ..publish import publish_files, recover_files, verify_folder
from ..runtime import thread_tick
from .checkpoints import (CHECKPOINT_NAME, DIGESTS_NAME, PREVIOUS_NAME, NonFiniteError, checkpoint_path,
                          checkpoint_tensors, first_non_finite, load_run_checkpoint, model_from_checkpoint,
                          remove_stale_temporaries, save_checkpoint_file)
from .config import TrainConfig
from .evaluation import evaluate_perplexity
from .export import load_model_dir
from .fingerprint import compare_corpus, corpus_fingerprint, vocabulary_coverage, warn_about_coverage
from .model import LanguageModel, init_weights
from .trainer import StepResult, Trainer, derive_seed

__all__ = ["run_training", "FEW_SHARDS", "RUN_FILES"]

logger = logging.getLogger(__name__)

#: below this many training files (but more than one) ``train`` warns about the streams' file order
FEW_SHARDS = 8
#: the files ``train`` writes in the run directory (and whose stale temporaries it removes)
RUN_FILES = (CHECKPOINT_NAME, PREVIOUS_NAME, DIGESTS_NAME, "options.json", "vocab.txt", "config.json")
#: the exclusive lock of a run folder: one ``train`` (fresh or ``--resume``) at a time
LOCK_NAME = "train.lock"
#: config.json fields that belong to one invocation: a resumed run does not rewrite them
_PER_INVOCATION = ("max_minutes",)


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
    from .. import settings
    env = settings.distributed()
    world = env.world_size
    if world <= 1:
        return 0, 1, torch.device(device)
    local_rank = env.local_rank
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


def run_training(train: str | Sequence[str], out_dir: str, options: ElmoOptions | None, config: TrainConfig, *,
                 heldout: str | None = None, vocab_path: str | None = None, resume: bool = False,
                 init_from: str | None = None, progress: bool = True,
                 allow_changed_corpus: bool = False) -> dict[str, Any]:
    """Train a biLM; the whole ``elmo-fast train`` command.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function: gradients are averaged by
    DistributedDataParallel, each process reads its own corpus parts, rank 0 writes files and logs.
    ``config.batch_size`` is per process.

    Files in ``out_dir``: ``options.json`` (model + training keys), ``vocab.txt``, ``config.json`` and
    ``checkpoint.pt`` (written atomically every ``checkpoint_every`` steps, at the end and on
    SIGINT/SIGTERM; never with NaN/Inf weights or optimizer state: :class:`NonFiniteError`, the previous
    checkpoint stays). ``resume=True`` continues from ``checkpoint.pt`` exactly (model, optimizer, data
    position, RNGs, carried LSTM states) after checking that the corpus files (names and sizes) are the ones
    the run was trained on (``allow_changed_corpus`` accepts a change).

    Args:
        options: the model shape; None with ``resume`` (the checkpoint's) or ``init_from`` (that model's).

    Returns:
        a summary dict (steps, tokens, seconds, tokens/s, last loss, held-out perplexity if any).
    """
    config.validate()
    if options is None and not resume and not init_from:
        raise UserError("--options: required unless --resume or --init-from gives the model shape")
    rank, world, device = _setup_distributed(config.device)
    is_main = rank == 0
    if not is_main:  # rank 0 logs; the others only warn
        logging.getLogger("elmo_fast").setLevel(logging.WARNING)
    try:
        with _StopFlag() as stop:  # installed first: a signal during setup still ends in a checkpoint
            job = _Job(train, out_dir, options, config, heldout, vocab_path, resume, init_from, progress,
                       allow_changed_corpus, rank, world, device, stop)
            return job.run()
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


_LOCK_BUSY = "another `elmo-fast train` is using it now (wait for it to end or choose another --out)"


def run_lock(out_dir: str) -> FileLock:
    """Take the exclusive lock of a run folder (UserError naming the holder when another ``train`` has it)."""
    return FileLock(os.path.join(out_dir, LOCK_NAME), f"run folder {out_dir}", _LOCK_BUSY)


def check_run_lock(out_dir: str) -> None:
    """UserError naming the holder when another ``train`` holds the run folder now; writes nothing."""
    FileLock.check(os.path.join(out_dir, LOCK_NAME), f"run folder {out_dir}", _LOCK_BUSY)


def _check_out_dir(out_dir: str) -> None:
    """The run directory must be a directory we can write (created if missing)."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir}: exists and is not a directory; expected a run directory")
    if os.path.isdir(out_dir):
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise UserError(f"--out {out_dir}: directory is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot create the run directory ({e.strerror or e}; "
                        f"parent {parent})") from None


class _Job:
    """One ``train`` invocation, set up in steps: inputs, vocabulary, options, model, data, then the loop."""

    def __init__(self, train: str | Sequence[str], out_dir: str, options: ElmoOptions | None, config: TrainConfig,
                 heldout: str | None, vocab_path: str | None, resume: bool, init_from: str | None, progress: bool,
                 allow_changed_corpus: bool, rank: int, world: int, device: torch.device, stop: "_StopFlag") -> None:
        self.out_dir, self.options, self.config = out_dir, options, config
        self.heldout, self.vocab_path, self.resume, self.init_from = heldout, vocab_path, resume, init_from
        self.progress, self.allow_changed_corpus = progress, allow_changed_corpus
        self.rank, self.world, self.device, self.stop = rank, world, device, stop
        self.is_main = rank == 0
        self.ckpt_file = checkpoint_path(out_dir)
        self.run_vocab_file = os.path.join(out_dir, "vocab.txt")
        self.ckpt: dict[str, Any] | None = None
        self.ckpt_source = self.ckpt_file
        #: sha256 of the verified checkpoint now at ckpt_file (None: none, or not known good)
        self.ckpt_digest: str | None = None
        self.saved_step: int | None = None
        self.lock: FileLock | None = None
        self.train_spec = train

    # ---- setup steps
    def check_inputs(self) -> None:
        self.files = expand_shards(self.train_spec)
        for f in self.files:
            check_readable_file(f, "--train")
        if self.heldout is not None:
            check_readable_file(self.heldout, "--heldout")
        if self.vocab_path is not None:
            check_readable_file(self.vocab_path, "--vocab")
        if self.is_main and 1 < len(self.files) < FEW_SHARDS:
            logger.warning("%d training files: the forward and backward streams each read one file at a time in "
                           "their own random order (bilm-tf), so with few files the two LMs spend long stretches on "
                           "different files and each ends fitted to the file it read last. If the files differ in "
                           "kind (e.g. Wikipedia and web text), mix their lines into many shards first (README, "
                           "Pretraining)", len(self.files))
        self.corpus = corpus_fingerprint(self.files)
        if self.resume and not os.path.isdir(self.out_dir):
            raise MissingFileError(f"checkpoint not found: {self.ckpt_file} (--resume needs an existing run "
                                    f"directory)")
        if not self.resume and os.path.exists(self.ckpt_file):  # refused before a lock file is created
            check_run_lock(self.out_dir)  # a train running there now is the better explanation
            raise UserError(f"{self.out_dir} already holds a checkpoint ({CHECKPOINT_NAME}); pass --resume to "
                            f"continue it or choose another --out")
        self.lock_run_folder()
        if self.is_main:
            recover_files(self.out_dir)  # a settings update committed by a killed run is completed first
        if self.resume:
            self.ckpt, digest, self.ckpt_source = load_run_checkpoint(self.out_dir, fallback=True)
            if self.ckpt_source == self.ckpt_file:
                self.ckpt_digest, self.saved_step = digest, int(self.ckpt["step"])
            if int(self.ckpt["world_size"]) != self.world:
                raise UserError(f"{self.ckpt_source} was written by {self.ckpt['world_size']} process(es); resume "
                                f"with the same number (found {self.world})")
            self.check_run_settings()
            saved = self.ckpt.get("corpus")
            if saved is None:
                logger.warning("%s has no corpus fingerprint (written by an older elmo-fast): the corpus cannot be "
                               "checked", self.ckpt_source)
            else:
                change = compare_corpus(saved, self.corpus)
                if change is not None and not self.allow_changed_corpus:
                    raise UserError(f"--train: the corpus differs from the one {self.ckpt_source} was trained on "
                                    f"({change}); resume on the same files, or pass --allow-changed-corpus to "
                                    f"continue on these")
                if change is not None:
                    logger.warning("--allow-changed-corpus: continuing on a changed corpus (%s)", change)
        elif os.path.exists(self.ckpt_file):
            raise UserError(f"{self.out_dir} already holds a checkpoint ({CHECKPOINT_NAME}); pass --resume to "
                            f"continue it or choose another --out")
        if self.is_main:
            for name in RUN_FILES:
                remove_stale_temporaries(os.path.join(self.out_dir, name))

    def lock_run_folder(self) -> None:
        """Rank 0 creates the run folder if needed and takes its exclusive lock (held until the job ends; the
        kernel drops it if the process dies); under torchrun every rank learns whether it got it."""
        error: Exception | None = None
        if self.is_main:
            try:
                _check_out_dir(self.out_dir)
                self.lock = run_lock(self.out_dir)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
                error = e
        if _any_rank(error is not None, self.world, self.device):
            if error is not None:
                raise error
            raise UserError(f"run folder {self.out_dir}: rank 0 could not take the run's lock (see its error)")

    def check_run_settings(self) -> None:
        """``--resume``: the run's own settings files are the ones ``train`` published (manifest), and the
        checkpoint is of the model they describe; a checkpoint of another shape (another run's, copied in) is
        refused, not adopted. Nothing has been written when this refuses."""
        assert self.ckpt is not None
        verify_folder(self.out_dir, ("config.json", "options.json"))
        opt_file = os.path.join(self.out_dir, "options.json")
        if not os.path.exists(opt_file):
            return
        run_options = load_options(opt_file)
        ckpt_options = options_from_dict(self.ckpt["options"], source=f"{self.ckpt_source} options")
        if _shape(run_options) != _shape(ckpt_options):
            raise UserError(f"{self.ckpt_source}: holds a model of another shape (lstm {ckpt_options.lstm}) than the "
                            f"run's {opt_file} (lstm {run_options.lstm}); refusing to resume it (another run's "
                            f"checkpoint?). Put the run's own checkpoint back, or train it in another --out")

    def resolve_vocab(self) -> None:
        cfg, ckpt = self.config, self.ckpt
        if self.init_from and self.resume:
            logger.warning("--init-from is ignored with --resume (the checkpoint holds the weights)")
            self.init_from = None
        self.init_model: LanguageModel | None = None
        self.init_vocab: Vocabulary | None = None
        self.init_has_softmax = False
        if self.init_from:  # ELMo files (softmax + vocab optional) or another run directory
            self.init_model, self.init_vocab, self.init_has_softmax = load_model_dir(self.init_from, cfg.backend,
                                                                                     need_softmax=False)
        vocab_source = None
        if self.resume:
            assert ckpt is not None
            vocab = Vocabulary.from_file(self.run_vocab_file)
            if self.vocab_path is not None and Vocabulary.from_file(self.vocab_path).digest() != vocab.digest():
                raise UserError(f"--vocab {self.vocab_path} differs from the vocabulary of the run "
                                f"({self.run_vocab_file})")
            if vocab.digest() != ckpt["vocab_digest"] or len(vocab) != int(ckpt["vocab_size"]):
                raise UserError(f"{self.run_vocab_file} ({len(vocab)} tokens) does not match the vocabulary "
                                f"{self.ckpt_file} was trained with ({ckpt['vocab_size']} tokens)")
        elif self.vocab_path is not None:
            vocab = Vocabulary.from_file(self.vocab_path)
            vocab_source = f"--vocab {self.vocab_path}"
        elif self.init_vocab is not None:
            vocab = self.init_vocab
            vocab_source = f"the vocabulary of --init-from {self.init_from}"
        else:
            if self.is_main:
                logger.info("building the vocabulary from %d file(s)", len(self.files))
                vocab = Vocabulary.build(self.files, cfg.min_count, cfg.max_vocab, cfg.skip_bad_lines)
                vocab.save(self.run_vocab_file)
            if self.world > 1:
                dist.barrier()
            if not self.is_main:
                vocab = Vocabulary.from_file(self.run_vocab_file)
        vocab.require_specials()
        if self.is_main and vocab_source is not None:
            warn_about_coverage(vocab_source, vocabulary_coverage(vocab, self.files, cfg.skip_bad_lines))
        if self.is_main and not self.resume and not (os.path.exists(self.run_vocab_file)
                                                     and Vocabulary.from_file(self.run_vocab_file).digest()
                                                     == vocab.digest()):
            vocab.save(self.run_vocab_file)
        logger.info("vocabulary: %d tokens", len(vocab))
        self.vocab = vocab

    def resolve_options(self) -> None:
        cfg, ckpt, options = self.config, self.ckpt, self.options
        if self.resume:
            assert ckpt is not None
            saved = options_from_dict(ckpt["options"], source=f"{self.ckpt_file} options")
            if options is not None and _shape(saved) != _shape(options):
                raise UserError(f"--options describe a different model shape than {self.ckpt_file} (checkpoint: "
                                f"lstm {saved.lstm}; given: lstm {options.lstm}); resume with the run's options "
                                f"(leave out --options)")
            options = saved
        if self.init_model is not None:
            init_options = self.init_model.bilm.options
            if options is not None and _shape(init_options) != _shape(options):
                logger.info("--init-from: using the model shape of %s", self.init_from)
            extra = options.extra if options is not None else {}
            options = dataclasses.replace(init_options, extra={**init_options.extra, **extra})
        assert options is not None
        n_train_tokens = options.extra.get("n_train_tokens")
        if cfg.max_steps is None and not self.resume and n_train_tokens is None:
            n_train_tokens = _count_tokens(self.files, cfg.skip_bad_lines)
        options = dataclasses.replace(options, extra={
            **options.extra, "n_tokens_vocab": len(self.vocab), "batch_size": cfg.batch_size,
            "unroll_steps": cfg.unroll_steps, "n_negative_samples_batch": cfg.n_negative_samples,
            "dropout": cfg.dropout, "learning_rate": cfg.learning_rate, "all_clip_norm_val": cfg.clip_norm,
            "sample_softmax": cfg.sample_softmax, "n_epochs": cfg.n_epochs, "bidirectional": True,
            **({"n_train_tokens": int(n_train_tokens)} if n_train_tokens else {})})
        max_steps = cfg.max_steps
        if max_steps is None and cfg.max_minutes is None:
            if self.resume and ckpt is not None and ckpt.get("max_steps") is not None:
                max_steps = int(ckpt["max_steps"])
            else:
                max_steps = max(1, int(cfg.n_epochs * int(options.extra["n_train_tokens"])
                                       // (cfg.batch_size * cfg.unroll_steps * self.world)))
        self.options, self.max_steps = options, max_steps

    def settings_files(self) -> dict[str, bytes]:
        """The contents of ``options.json`` and ``config.json`` for this invocation. A resumed run keeps its
        saved config.json and changes only what this invocation set otherwise (a flag given, a corpus accepted
        with --allow-changed-corpus); per-invocation fields (``max_minutes``) are not taken over."""
        cfg = self.config
        config = {**cfg.to_dict(), "world_size": self.world, "train": list(self.files),
                  "heldout": os.path.abspath(self.heldout) if self.heldout else None,
                  "max_steps_resolved": self.max_steps, "corpus": self.corpus}
        path = os.path.join(self.out_dir, "config.json")
        if self.resume and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: not readable JSON ({e}); expected the run's settings") from None
            if isinstance(saved, dict):
                same_corpus = isinstance(saved.get("corpus"), dict) and \
                    compare_corpus(saved["corpus"], self.corpus) is None
                for key, value in config.items():
                    if key in _PER_INVOCATION and key in saved:
                        continue
                    if key == "max_steps" and value is None and key in saved:
                        continue  # not given: the run's own
                    if key in ("train", "corpus") and same_corpus:
                        continue  # the same files, however they were named
                    saved[key] = value
                config = saved
        return {"options.json": json_text(self.options.to_dict()).encode(), "config.json": json_text(config).encode()}

    def publish_settings(self) -> None:
        """Write options.json and config.json as one set (:func:`elmo_fast.publish.publish_files`), after every
        compatibility check passed, and only when their content changes."""
        if not self.is_main:
            return
        contents = self.settings_files()
        current = {}
        for name in contents:
            try:
                with open(os.path.join(self.out_dir, name), "rb") as f:
                    current[name] = f.read()
            except OSError:
                current[name] = None
        if current != contents:
            publish_files(self.out_dir, contents)

    def build_model(self) -> None:
        cfg = self.config
        if self.resume:
            assert self.ckpt is not None
            model = model_from_checkpoint(self.ckpt, cfg.backend, source=self.ckpt_file)
        else:
            init_model = self.init_model
            has_proj = init_model.bilm.token_encoder.W_proj is not None if init_model is not None else True
            model = LanguageModel(self.options, len(self.vocab), backend=cfg.backend, has_projection=has_proj)
            init_weights(model.bilm, model.softmax_weight, model.softmax_bias,
                         torch.Generator().manual_seed(derive_seed(cfg.seed, 0)))
            if init_model is not None:
                model.bilm.load_bilm_tf_weights(init_model.bilm.bilm_tf_weights())
                same_vocab = self.init_vocab is not None and self.init_vocab.digest() == self.vocab.digest()
                if self.init_has_softmax and same_vocab:
                    with torch.no_grad():
                        model.softmax_weight.copy_(init_model.softmax_weight)
                        model.softmax_bias.copy_(init_model.softmax_bias)
                    logger.info("--init-from: loaded weights, softmax weights and vocabulary of %s", self.init_from)
                else:
                    logger.info("--init-from: loaded the biLM weights of %s; softmax initialised fresh (%s)",
                                self.init_from, "different vocabulary" if self.init_has_softmax
                                else "no softmax_weights.hdf5/vocab.txt")
                self.init_model = None
        model.to(self.device)
        ddp_model = None
        if self.world > 1:
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        torch.manual_seed(derive_seed(cfg.seed, self.rank, 1))  # dropout masks
        self.model = model
        self.trainer = Trainer(model, cfg, ddp_model, self.rank)

    def build_data(self) -> None:
        cfg, world, rank = self.config, self.world, self.rank
        parts = cfg.data_parts or world
        if parts % world:
            raise UserError(f"--data-parts {parts} is not a multiple of the number of processes ({world})")
        per_rank = parts // world
        self.data = TrainingBatches(self.files, self.vocab, cfg.batch_size, cfg.unroll_steps, cfg.seed, parts,
                                    range(rank * per_rank, (rank + 1) * per_rank), skip_bad_lines=cfg.skip_bad_lines)
        self.step, self.tokens_seen = 0, 0
        if self.resume:
            ckpt = self.ckpt
            assert ckpt is not None
            self.trainer.optimizer.load_state_dict(ckpt["optimizer"])
            rank_state = ckpt["ranks"][rank]
            self.trainer.load_rank_state(rank_state)
            self.data.load_state_dict(rank_state["data"])
            self.step, self.tokens_seen = int(ckpt["step"]), int(ckpt["tokens"])
            logger.info("resumed %s at step %d", self.ckpt_source, self.step)
            self.ckpt = None  # free the loaded tensors

    # ---- actions
    def save_checkpoint(self) -> None:
        """Every rank checks its weights and optimizer state are finite (they are equal across ranks), then
        rank 0 writes; with NaN/Inf nothing is written and :class:`NonFiniteError` names the tensor."""
        model, trainer = self.model, self.trainer
        on_device = {"model": model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        bad = first_non_finite(checkpoint_tensors(on_device))    # checked where the tensors are (no copies)
        if bad is not None:
            raise NonFiniteError(f"step {self.step}: tensor '{bad}' holds NaN/Inf; checkpoint not written "
                                 f"({self.ckpt_file} keeps the last finite one). Lower --learning-rate (now "
                                 f"{self.config.learning_rate}) or --clip-norm, or check the data")
        mine = {**trainer.rank_state(), "data": self.data.state_dict()}
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        if self.is_main:
            state = {"model": {k: v.detach().cpu() for k, v in on_device["model"].items()},
                     "optimizer": on_device["optimizer"]}
            self.ckpt_digest = save_checkpoint_file(
                {"step": self.step, "tokens": self.tokens_seen, **state, "options": self.options.to_dict(),
                 "vocab_size": len(self.vocab), "vocab_digest": self.vocab.digest(), "world_size": self.world,
                 "max_steps": self.max_steps, "config": self.config.to_dict(), "ranks": gathered,
                 "corpus": self.corpus}, self.ckpt_file, check_finite=False, current_digest=self.ckpt_digest,
                kept_step=self.saved_step)
            self.saved_step = self.step
            logger.info("checkpoint: step %d -> %s", self.step, self.ckpt_file)

    def evaluate(self) -> dict[str, Any] | None:
        if self.heldout is None or not self.is_main:
            return None
        cfg = self.config
        # a large held-out file takes minutes: say so first, so that a log without a bar does not look hung
        logger.info("step %d: held-out perplexity of %s (every token, full softmax)", self.step, self.heldout)
        result = evaluate_perplexity(self.model, self.vocab, self.heldout, cfg.eval_batch_size, 1, cfg.softmax_chunk,
                                     progress=self.progress)
        logger.info("step %d held-out perplexity %.2f (forward %.2f, backward %.2f, all %d tokens)", self.step,
                    result["perplexity"], result["forward_perplexity"], result["backward_perplexity"],
                    result["tokens"])
        return result

    def run(self) -> dict[str, Any]:
        try:
            self.check_inputs()
            self.resolve_vocab()
            self.resolve_options()
            self.build_model()
            self.build_data()          # the last check: the data position fits (--batch-size, corpus parts)
            self.publish_settings()    # nothing of the run's settings was written before this point
            return self.loop()
        finally:
            if self.lock is not None:
                self.lock.release()

    def loop(self) -> dict[str, Any]:
        cfg, world = self.config, self.world
        max_steps = self.max_steps
        start = time.perf_counter()
        deadline = start + 60.0 * cfg.max_minutes if cfg.max_minutes is not None else None
        show = self.progress and self.is_main
        bar = progress.bar(show, total=max_steps, initial=self.step, unit="step", desc="training", dynamic_ncols=True)
        ticker = progress.LogTicker(show and bar.disable)  # a log line now and then where no bar is drawn
        last: StepResult | None = None
        heldout_result = None
        run_tokens = 0
        stopped_by = "max_steps"
        while True:
            done = max_steps is not None and self.step >= max_steps
            timeout = deadline is not None and time.perf_counter() >= deadline
            if _any_rank(done or timeout or self.stop.signal is not None, world, self.device):
                stopped_by = "signal" if self.stop.signal is not None else "time" if timeout else "max_steps"
                break
            batch = self.data.next_batch()
            last = self.trainer.step(batch)
            thread_tick()  # automatic thread count follows the machine's load (elmo_fast.runtime)
            self.step += 1
            step_tokens = last.tokens * world
            self.tokens_seen += step_tokens
            run_tokens += step_tokens
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{last.loss:.3f}", ppl=f"{last.perplexity:.1f}",
                            tok_s=f"{run_tokens / max(elapsed, 1e-9):.0f}", refresh=False)
            if ticker.due():
                logger.info("step %d%s: loss %.4g, perplexity %.1f, %.0f tokens/s", self.step,
                            f"/{max_steps}" if max_steps is not None else "", last.loss, last.perplexity,
                            run_tokens / max(elapsed, 1e-9))
            if not math.isfinite(last.loss):
                raise NonFiniteError(f"step {self.step}: the loss is {last.loss}; checkpoint not written "
                                     f"({self.ckpt_file} keeps the last finite one). Lower --learning-rate (now "
                                     f"{cfg.learning_rate}) or check the data")
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                heldout_result = self.evaluate()
        bar.close()
        if self.saved_step != self.step:  # not twice for one step: the previous checkpoint is the fallback
            self.save_checkpoint()
        elapsed = time.perf_counter() - start
        if self.heldout is not None and stopped_by != "signal" and not (
                cfg.eval_every and self.step % cfg.eval_every == 0 and heldout_result):
            heldout_result = self.evaluate()
        summary = {"step": self.step, "tokens": self.tokens_seen, "run_tokens": run_tokens, "seconds": elapsed,
                   "tokens_per_second": run_tokens / max(elapsed, 1e-9), "stopped_by": stopped_by,
                   "world_size": world, "vocab_size": len(self.vocab),
                   "last_loss": last.loss if last else None, "last_perplexity": last.perplexity if last else None,
                   "heldout": heldout_result, "checkpoint": self.ckpt_file}
        if self.is_main:
            logger.info("stopped (%s) at step %d: %d tokens in %.1fs (%.0f tokens/s)", stopped_by, self.step,
                        run_tokens, elapsed, summary["tokens_per_second"])
        if world > 1:
            dist.barrier()
        return summary
