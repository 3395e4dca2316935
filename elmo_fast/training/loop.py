"""The training run (:func:`run_training`, the whole ``elmo-fast train`` command): run directory, vocabulary,
model, data, the step loop with periodic evaluation and checkpoints, signals, DDP under ``torchrun``."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..atomic import write_json
from ..data import TrainingBatches, Vocabulary, expand_shards, iter_shard_sentences
from ..options import ElmoOptions, options_from_dict
from .checkpoints import CHECKPOINT_NAME, checkpoint_path, load_checkpoint, model_from_checkpoint, save_checkpoint_file
from .config import TrainConfig
from .evaluation import evaluate_perplexity
from .export import load_model_dir
from .model import LanguageModel, init_weights
from .trainer import StepResult, Trainer, derive_seed

__all__ = ["run_training", "FEW_SHARDS"]

logger = logging.getLogger(__name__)

#: below this many training files (but more than one) ``train`` warns about the streams' file order
FEW_SHARDS = 8


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
    ckpt_file = checkpoint_path(out_dir)
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
        model = model_from_checkpoint(ckpt, config.backend)
    else:
        has_proj = init_model.bilm.token_encoder.W_proj is not None if init_model is not None else True
        model = LanguageModel(options, len(vocab), backend=config.backend, has_projection=has_proj)
        init_weights(model.bilm, model.softmax_weight, model.softmax_bias,
                     torch.Generator().manual_seed(derive_seed(config.seed, 0)))
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
    torch.manual_seed(derive_seed(config.seed, rank, 1))  # dropout masks
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
            save_checkpoint_file({"step": step, "tokens": tokens_seen, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
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
