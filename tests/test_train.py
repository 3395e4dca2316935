"""Training loop (elmo_fast.train), CLI train/export/evaluate, torchrun/DDP, resume, bad input."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import math

import pytest
import torch

from elmo_fast import ElmoEmbedder, batch_to_ids
from elmo_fast.cli import main as cli_main
from elmo_fast.data import TrainingBatches, Vocabulary
from elmo_fast.nn.bilm import BiLM, _bilstm_streams_stacked
from elmo_fast.nn.ops import bilstm_streams as bilstm_streams_reference
from elmo_fast.nn.ops import bilstm as bilstm_reference_op
from elmo_fast.options import preset
from elmo_fast.train import (CHECKPOINT_NAME, LanguageModel, TrainConfig, Trainer, evaluate_perplexity, init_weights,
                             load_checkpoint, load_model_dir, run_training)

REPO = Path(__file__).resolve().parents[1]



def make_corpus(directory: Path, n_files: int = 2, lines: int = 60, seed: int = 0) -> list[Path]:
    """A learnable synthetic corpus: sentences from a small first-order Markov chain over 24 words."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(24)]
    successor = rng.integers(0, 24, size=(24, 2))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(n_files):
        out = []
        for _ in range(lines):
            k = int(rng.integers(0, 24))
            sent = [words[k]]
            for _ in range(int(rng.integers(3, 9))):
                k = int(successor[k, int(rng.integers(0, 2))])
                sent.append(words[k])
            out.append(" ".join(sent))
        path = directory / f"shard{f}.txt"
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def tiny_model(vocab_size: int, seed: int = 0) -> LanguageModel:
    model = LanguageModel(preset("tiny"), vocab_size, backend="reference")
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(seed))
    return model


# ---------------------------------------------------------------------------------------------- model pieces
def test_forward_streams_reference_equals_stacked_bilstm_and_carries_state():
    """The reference bilstm_streams op equals running the plain bilstm op on a 2B stack (the path other
    backends take), forward and backward; splitting T into two calls with the carried state changes nothing."""
    torch.manual_seed(0)
    bilm = BiLM(preset("tiny"), stateful=False, backend="reference")
    for p in bilm.parameters():
        torch.nn.init.normal_(p, 0.0, 0.4)
    B, T, P = 3, 7, 16
    fw, bw = torch.randn(B, T, P, requires_grad=True), torch.randn(B, T, P, requires_grad=True)
    h0 = torch.randn(2, B, 2 * P)
    c0 = torch.randn(2, B, 2 * 64)
    a_fw, a_bw, (a_h, a_c) = bilstm_streams_reference(bilm.lstm, fw, bw, (h0, c0))
    b_fw, b_bw, (b_h, b_c) = _bilstm_streams_stacked(bilstm_reference_op, bilm.lstm, fw, bw, (h0, c0), 0.0)
    # float32: the stacked path multiplies 2B-row matrices (another summation order): atol 1e-5
    for x, y in zip(a_fw + a_bw + [a_h, a_c], b_fw + b_bw + [b_h, b_c]):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(sum(t.sum() for t in a_fw + a_bw), (fw, bw), retain_graph=True)
    gb = torch.autograd.grad(sum(t.sum() for t in b_fw + b_bw), (fw, bw))
    # gradients reach ~50 here: absolute tolerance scaled with the magnitude (float32, ~20 sequential clipped
    # steps; measured against float64, each path is off by up to ~2e-6 x max, so the two may differ by ~4e-6 x max)
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-5 * float(y.abs().max())) for x, y in zip(ga, gb))
    # the backward LSTMs read the reverse stream in order: output t depends on inputs <= t only
    g = torch.autograd.grad(a_bw[-1][:, 2].sum(), bw)[0]
    assert g[:, 3:].abs().max() == 0 and g[:, :3].abs().max() > 0
    # carrying the state across two calls = one call
    f1, b1, s1 = bilstm_streams_reference(bilm.lstm, fw[:, :4], bw[:, :4], (h0, c0))
    f2, b2, s2 = bilstm_streams_reference(bilm.lstm, fw[:, 4:], bw[:, 4:], s1)
    assert torch.equal(torch.cat([f1[-1], f2[-1]], 1), a_fw[-1])
    assert torch.equal(torch.cat([b1[-1], b2[-1]], 1), a_bw[-1])
    assert torch.equal(s2[0], a_h) and torch.equal(s2[1], a_c)
    # and BiLM.forward_streams dispatches to the reference op on the reference backend
    m_fw, _, _ = bilm.forward_streams(fw, bw, (h0, c0))
    assert torch.equal(m_fw[-1], a_fw[-1])


def test_loss_falls_on_a_small_corpus(tmp_path):
    files = [str(p) for p in make_corpus(tmp_path / "corpus", n_files=1, lines=80)]
    held = make_corpus(tmp_path / "held", n_files=1, lines=30, seed=0)[0]  # same chain, same sentences' law
    vocab = Vocabulary.build(files)
    model = tiny_model(len(vocab))
    before = evaluate_perplexity(model, vocab, str(held), batch_size=8)["perplexity"]
    trainer = Trainer(model, TrainConfig(batch_size=8, unroll_steps=8, n_negative_samples=12, seed=0))
    data = TrainingBatches(files, vocab, 8, 8, seed=0)
    losses = [trainer.step(data.next_batch()).loss for _ in range(60)]
    after = evaluate_perplexity(model, vocab, str(held), batch_size=8)["perplexity"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
    assert after < 0.7 * before, (before, after)  # full-softmax held-out perplexity (~27 at init)
    assert all(np.isfinite(losses))


def test_sparse_softmax_rows_update_like_the_dense_gradient(tmp_path):
    """Sampled steps give softmax_weight a sparse gradient (touched rows only); Adagrad with it must leave
    every parameter where the dense gradient leaves it, and untouched rows bit-identical."""
    files = [str(p) for p in make_corpus(tmp_path / "corpus", n_files=1, lines=40)]
    vocab = Vocabulary.build(files)
    results = []
    for sparse in (True, False):
        torch.manual_seed(5)  # same dropout masks in both runs
        model = tiny_model(len(vocab), seed=3)
        start = model.softmax_weight.detach().clone()
        trainer = Trainer(model, TrainConfig(batch_size=4, unroll_steps=6, n_negative_samples=9, seed=1))
        model.sparse_softmax_grad = sparse
        data = TrainingBatches(files, vocab, 4, 6, seed=0)
        trainer.step(data.next_batch())
        assert model.softmax_weight.grad.is_sparse == sparse
        trainer.step(data.next_batch())
        results.append((start, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (start, got), (_, want) = results
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    moved = (got["softmax_weight"] != start).any(dim=1)
    assert 0 < int(moved.sum()) < len(vocab)  # some rows were touched, others never were
    assert torch.equal(got["softmax_weight"][~moved], want["softmax_weight"][~moved])


def _config(**kw) -> TrainConfig:
    base = dict(batch_size=4, unroll_steps=5, n_negative_samples=10, seed=7, checkpoint_every=1000,
                eval_batch_size=4, backend="reference")
    base.update(kw)
    return TrainConfig(**base)


def test_resume_gives_bit_identical_weights(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_files=3, lines=20)
    pattern = str(tmp_path / "corpus" / "*.txt")
    opts = preset("tiny")
    full = run_training(pattern, str(tmp_path / "full"), opts, _config(max_steps=6), progress=False)
    assert full["step"] == 6
    part = run_training(pattern, str(tmp_path / "split"), opts, _config(max_steps=3), progress=False)
    assert part["step"] == 3
    resumed = run_training(pattern, str(tmp_path / "split"), opts, _config(max_steps=6), resume=True, progress=False)
    assert resumed["step"] == 6
    a = load_checkpoint(str(tmp_path / "full" / CHECKPOINT_NAME))
    b = load_checkpoint(str(tmp_path / "split" / CHECKPOINT_NAME))
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["sum"], b["optimizer"]["state"][k]["sum"])
    ra, rb = a["ranks"][0], b["ranks"][0]
    assert torch.equal(ra["lstm_h"], rb["lstm_h"]) and torch.equal(ra["lstm_c"], rb["lstm_c"])
    assert ra["data"] == rb["data"]
    # the run really trained (weights moved away from the step-3 checkpoint's)
    assert not torch.equal(a["model"]["softmax_weight"], load_checkpoint_step3(tmp_path))
    assert len(corpus) == 3


def load_checkpoint_step3(tmp_path: Path) -> torch.Tensor:
    run = run_training(str(tmp_path / "corpus" / "*.txt"), str(tmp_path / "three"), preset("tiny"),
                       _config(max_steps=3), progress=False)
    assert run["step"] == 3
    return load_checkpoint(str(tmp_path / "three" / CHECKPOINT_NAME))["model"]["softmax_weight"]


def test_resume_mismatches_are_clear_errors(tmp_path):
    make_corpus(tmp_path / "corpus", n_files=1, lines=20)
    pattern = str(tmp_path / "corpus" / "*.txt")
    run_dir = str(tmp_path / "run")
    run_training(pattern, run_dir, preset("tiny"), _config(max_steps=1), progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        run_training(pattern, run_dir, preset("tiny"), _config(max_steps=2), progress=False)
    with pytest.raises(ValueError, match="different model shape"):
        run_training(pattern, run_dir, preset("small"), _config(max_steps=2), resume=True, progress=False)
    other = tmp_path / "other_vocab.txt"
    other.write_text("<S>\n</S>\n<UNK>\nw0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="differs from the vocabulary"):
        run_training(pattern, run_dir, preset("tiny"), _config(max_steps=2), resume=True, vocab_path=str(other),
                     progress=False)
    # the run's vocab.txt edited after the checkpoint was written
    (tmp_path / "run" / "vocab.txt").write_text("<S>\n</S>\n<UNK>\nw0\nw1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="does not match the vocabulary"):
        run_training(pattern, run_dir, preset("tiny"), _config(max_steps=2), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run_training(pattern, str(tmp_path / "fresh"), preset("tiny"), _config(max_steps=2), resume=True,
                     progress=False)


def test_export_loads_in_elmo_embedder_with_identical_layers(tmp_path, capsys):
    make_corpus(tmp_path / "corpus", n_files=1, lines=30)
    run_dir, out_dir = tmp_path / "run", tmp_path / "export"
    held = tmp_path / "held.txt"
    held.write_text("w1 w2 w3\nw4 w5\nw7 w2 w9 w1\nw0 w0\n", encoding="utf-8")
    rc = cli_main(["train", "--train", str(tmp_path / "corpus" / "*.txt"), "--out", str(run_dir), "--options", "tiny",
                   "--max-steps", "3", "--batch-size", "4", "--unroll-steps", "5", "--n-negative-samples", "8",
                   "--backend", "reference", "--quiet"])
    assert rc == 0
    assert cli_main(["export", str(run_dir), str(out_dir)]) == 0
    for name in ("options.json", "weights.hdf5", "softmax_weights.hdf5", "vocab.txt"):
        assert (out_dir / name).exists(), name
    options = json.loads((out_dir / "options.json").read_text())
    assert options["char_cnn"]["n_characters"] == 262
    assert options["n_tokens_vocab"] == len((out_dir / "vocab.txt").read_text().splitlines())

    trained, vocab, _ = load_model_dir(str(run_dir), backend="reference")
    sentences = [["w1", "w2", "zebra"], ["w3"], ["w5", "w6", "w7", "w8", "w9"]]
    with torch.no_grad():
        want = trained.bilm(batch_to_ids(sentences))["activations"]
    embedder = ElmoEmbedder(str(out_dir / "options.json"), str(out_dir / "weights.hdf5"), backend="reference")
    got = embedder.batch_to_embeddings(sentences)[0]
    for k in range(3):
        for i, s in enumerate(sentences):
            assert torch.equal(got[i, k, :len(s)], want[k][i, 1:len(s) + 1]), (k, i)

    # evaluate: a run and its export give the same perplexity
    run_json, exp_json = tmp_path / "run.json", tmp_path / "exp.json"
    assert cli_main(["evaluate", str(run_dir), "--heldout", str(held), "--batch-size", "2", "--json", str(run_json),
                     "--backend", "reference", "--quiet"]) == 0
    assert cli_main(["evaluate", str(out_dir), "--heldout", str(held), "--batch-size", "2", "--json", str(exp_json),
                     "--backend", "reference", "--quiet"]) == 0
    r, e = json.loads(run_json.read_text()), json.loads(exp_json.read_text())
    assert r["perplexity"] == e["perplexity"] and r["batches"] == e["batches"] > 0
    assert 1.0 < r["perplexity"] < len(vocab) * 10

    # --init-from the export with 0 steps: the new run starts from exactly the exported weights
    init_dir = tmp_path / "init"
    assert cli_main(["train", "--train", str(tmp_path / "corpus" / "*.txt"), "--out", str(init_dir), "--options",
                     "tiny", "--init-from", str(out_dir), "--max-steps", "0", "--batch-size", "4",
                     "--backend", "reference", "--quiet"]) == 0
    a = load_checkpoint(str(run_dir / CHECKPOINT_NAME))["model"]
    b = load_checkpoint(str(init_dir / CHECKPOINT_NAME))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and from a run directory; with a vocabulary of its own the softmax starts fresh
    other_vocab = tmp_path / "vocab2.txt"
    other_vocab.write_text("<S>\n</S>\n<UNK>\nw1\nw2\n", encoding="utf-8")
    for name, extra in (("init_run", []), ("init_vocab", ["--vocab", str(other_vocab)])):
        assert cli_main(["train", "--train", str(tmp_path / "corpus" / "*.txt"), "--out", str(tmp_path / name),
                         "--options", "tiny", "--init-from", str(run_dir), "--max-steps", "0", "--batch-size", "4",
                         "--backend", "reference", "--quiet"] + extra) == 0
        c = load_checkpoint(str(tmp_path / name / CHECKPOINT_NAME))["model"]
        assert all(torch.equal(a[k], c[k]) for k in a if not k.startswith("softmax"))
        assert torch.equal(a["softmax_weight"], c["softmax_weight"]) == (name == "init_run")


def test_cli_bad_input_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--train", str(tmp_path / "missing" / "*.txt"), "--out", str(tmp_path / "r"),
                       "--options", "tiny", "--max-steps", "1", "--quiet"])
    assert rc == 2 and "no files match" in caplog.text and "missing" in caplog.text
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"w1 w2\n\xc3\x28 broken\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["train", "--train", str(bad), "--out", str(tmp_path / "r2"), "--options", "tiny",
                       "--max-steps", "1", "--quiet"])
    assert rc == 2 and "bad.txt:2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["evaluate", str(tmp_path), "--heldout", str(bad), "--quiet"])
    assert rc == 2 and "bad.txt:2" in caplog.text  # the held-out file is read whole before any model is loaded
    good = tmp_path / "good.txt"
    good.write_text("w1 w2\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["evaluate", str(tmp_path), "--heldout", str(good), "--quiet"])
    assert rc == 2 and "options.json is missing" in caplog.text


def test_few_training_files_warn_about_stream_order(tmp_path, caplog):
    """With 2..7 files the forward and backward streams read different files for long stretches (bilm-tf's
    independent streams); train says so. One file, or many, gives no warning."""
    files = make_corpus(tmp_path / "c", n_files=2, lines=20)
    args = ["--options", "tiny", "--max-steps", "1", "--batch-size", "2", "--unroll-steps", "4", "--quiet"]
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["train", "--train", str(tmp_path / "c" / "*.txt"), "--out", str(tmp_path / "r2"), *args])
    assert rc == 0 and "2 training files" in caplog.text and "mix their lines" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["train", "--train", str(files[0]), "--out", str(tmp_path / "r1"), *args])
    assert rc == 0 and "training files" not in caplog.text


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env_one_thread() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 gloo processes x 2 rows == 1 process x 4 rows with --data-parts 2 (full softmax, no dropout: the
    only randomness left is the data order, which the data parts fix)."""
    make_corpus(tmp_path / "corpus", n_files=4, lines=15)
    common = ["train", "--train", str(tmp_path / "corpus" / "*.txt"), "--options", "tiny", "--max-steps", "3",
              "--unroll-steps", "4", "--full-softmax", "--dropout", "0", "--seed", "3", "--backend", "reference",
              "--threads", "1", "--quiet"]
    one = cli_main(common + ["--out", str(tmp_path / "one"), "--batch-size", "4", "--data-parts", "2"])
    assert one == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "elmo_fast.cli"] + common + ["--out", str(tmp_path / "two"), "--batch-size", "2"]
    proc = subprocess.run(cmd, env=_env_one_thread(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "one" / CHECKPOINT_NAME))
    b = load_checkpoint(str(tmp_path / "two" / CHECKPOINT_NAME))
    assert b["world_size"] == 2 and len(b["ranks"]) == 2 and b["step"] == 3
    # float32: DDP averages two half-batch gradients (another summation order than one full batch)
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=2e-5, rtol=1e-4), name
    assert float(a["model"]["softmax_bias"].abs().max()) > 1e-3  # biases start at zero: the runs did update
    # the two ranks' carried states are the two halves of the 1-process state
    h1 = a["ranks"][0]["lstm_h"]
    h2 = torch.cat([b["ranks"][0]["lstm_h"], b["ranks"][1]["lstm_h"]], dim=1)
    assert torch.allclose(h1, h2, atol=2e-5)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_resume_continues(tmp_path):
    make_corpus(tmp_path / "corpus", n_files=1, lines=30)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "elmo_fast.cli", "train", "--train", str(tmp_path / "corpus" / "*.txt"),
           "--out", str(run_dir), "--options", "tiny", "--max-steps", "100000", "--batch-size", "2",
           "--unroll-steps", "3", "--n-negative-samples", "8", "--threads", "1", "--backend", "reference", "--quiet"]
    proc = subprocess.Popen(cmd, env=_env_one_thread(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run_dir / "config.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    ckpt = load_checkpoint(str(run_dir / CHECKPOINT_NAME))
    step = int(ckpt["step"])
    assert "SIGTERM" in err
    resumed = run_training(str(tmp_path / "corpus" / "*.txt"), str(run_dir), preset("tiny"),
                           _config(batch_size=2, unroll_steps=3, n_negative_samples=8, max_steps=step + 1),
                           resume=True, progress=False)
    assert resumed["step"] == step + 1


def test_training_streams_compute_the_inference_bilm(fixtures_dir):
    """On the AllenNLP fixture model: the training path (forward stream <S> w1..wn, reverse stream
    </S> wn..w1, zero state) gives the same per-position layers as the inference biLM on BOS w1..wn EOS, so
    the weights training optimises are the weights the embedder runs."""
    from elmo_fast.chars import CharacterMapper

    bilm = BiLM.from_files(fixtures_dir / "allennlp" / "options.json", fixtures_dir / "allennlp" / "lm_weights.hdf5",
                           stateful=False, backend="reference")
    sentences = json.loads((fixtures_dir / "allennlp" / "sentences.json").read_text())
    mapper = CharacterMapper()
    P = bilm.options.lstm.projection_dim
    for words in (sentences[0][0].split(), sentences[1][3].split(), ["a"]):
        n = len(words)
        with torch.no_grad():
            layers = bilm(batch_to_ids([words]))["activations"]
            fw_ids = torch.tensor([[mapper.token_to_ids(w) for w in ["<S>"] + list(words)]])
            bw_ids = torch.tensor([[mapper.token_to_ids(w) for w in ["</S>"] + list(reversed(words))]])
            fw_out, bw_out, _ = bilm.forward_streams(bilm.encode_tokens(fw_ids), bilm.encode_tokens(bw_ids))
        for k in (1, 2):
            inference = layers[k][0]                      # (n + 2, 2P): BOS .. EOS
            assert torch.allclose(fw_out[k - 1][0], inference[:n + 1, :P], atol=1e-6)
            # reverse stream position j holds inference position n + 1 - j (EOS first, w1 last)
            assert torch.allclose(bw_out[k - 1][0], inference[1:n + 2, P:].flip(0), atol=1e-6)


@pytest.mark.parametrize("name", ["reference", "fast"])
def test_explicit_cpu_backends_train_and_evaluate(tmp_path, name):
    """An explicitly requested CPU backend runs a training step and a full-softmax evaluation."""
    from elmo_fast.data import TrainingBatches, Vocabulary
    from elmo_fast.options import preset
    from elmo_fast.train import LanguageModel, TrainConfig, Trainer, evaluate_perplexity, init_weights

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\na dog ran\nthe dog sat\n" * 5)
    vocab = Vocabulary.build([str(corpus)])
    model = LanguageModel(preset("tiny"), len(vocab), backend=name)
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
    trainer = Trainer(model, TrainConfig(batch_size=2, unroll_steps=4, n_negative_samples=4, seed=0))
    loss = trainer.step(TrainingBatches([str(corpus)], vocab, 2, 4, seed=0).next_batch()).loss
    assert math.isfinite(loss) and loss > 0
    result = evaluate_perplexity(model, vocab, str(corpus), 2, 1, max_batches=3)
    assert math.isfinite(result["perplexity"]) and result["perplexity"] > 1.0
