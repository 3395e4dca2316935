"""The probes on a frozen biLM: POS (linear, CoNLL-U), WiC (cosine threshold) and the demo's sense neighbours.

See :mod:`elmo_fast.probe` for what each probe measures; the data comes from :mod:`elmo_fast.probe.readers`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..embedder import ElmoEmbedder
from ..errors import MissingFileError, UserError
from ..nn.scalar_mix import ScalarMix
from .readers import TaggedSentence, WicPair

__all__ = ["load_embedder", "embed_tokens", "pos_probe", "wic_probe", "best_threshold", "PosProbeResult",
           "WicProbeResult", "SenseResult", "sense_vectors", "nearest_neighbour_senses", "wic_scores",
           "TIE_TOLERANCE"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- embedding
def load_embedder(model_dir: str | os.PathLike, device: str = "cpu", backend: str | None = None,
                  batch_size: int = 64) -> ElmoEmbedder:
    """A stateless :class:`ElmoEmbedder` for ``model_dir`` (``options.json`` + ``weights.hdf5``; or the URL of
    such a folder, or a public model's name: :mod:`elmo_fast.hub`)."""
    from ..hub import resolve
    model_dir = Path(resolve(model_dir, "model_dir"))
    options, weights = model_dir / "options.json", model_dir / "weights.hdf5"
    for p in (options, weights):
        if not p.is_file():
            raise MissingFileError(f"model directory {model_dir}: expected {p.name} (options.json + weights.hdf5 "
                                    f"as written by `elmo-fast export`), not found")
    cuda = -1 if device == "cpu" else int(device.split(":")[1]) if ":" in device else 0
    return ElmoEmbedder(options, weights, cuda_device=cuda, stateful=False, batch_size=batch_size, backend=backend)


def embed_tokens(embedder: ElmoEmbedder, sentences: Sequence[Sequence[str]], batch_size: int = 64,
                 progress: bool = False, desc: str = "embedding") -> list[np.ndarray]:
    """Embed sentences (batched by length; stateless, so order does not matter) -> one ``(3, n_i, 2P)`` each."""
    from ..progress import bar as progress_bar

    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[np.ndarray | None] = [None] * len(sentences)
    total = sum(len(s) for s in sentences)
    start = time.perf_counter()
    with progress_bar(progress, total=total, unit="tok", unit_scale=True, desc=desc) as bar:
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            for i, emb in zip(idx, embedder.embed_batch([list(sentences[i]) for i in idx])):
                out[i] = emb
            bar.update(sum(len(sentences[i]) for i in idx))
    elapsed = time.perf_counter() - start
    logger.info("%s: %d sentences, %d tokens in %.1fs (%.0f tokens/s)", desc, len(sentences), total, elapsed,
                total / max(elapsed, 1e-9))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- POS probe
@dataclass
class PosProbeResult:
    """Accuracies per representation (``"0"``, ``"1"``, ``"2"``, ``"mix"``) plus the word-form baseline."""

    test_accuracy: dict[str, float]
    dev_accuracy: dict[str, float]
    best_epoch: dict[str, int]
    mix_weights: list[float]
    baseline_test_accuracy: float
    n_tags: int
    n_tokens: dict[str, int]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Probe(nn.Module):
    """``(N, L, D)`` layers -> logits ``(N, K)``; ``layer`` picks one layer, ``None`` learns a scalar mix."""

    def __init__(self, n_layers: int, dim: int, n_tags: int, layer: int | None) -> None:
        super().__init__()
        self.layer = layer
        self.mix = ScalarMix(n_layers) if layer is None else None
        self.linear = nn.Linear(dim, n_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            return self.linear(x[:, self.layer])
        return self.linear(self.mix(list(x.unbind(1))))


def _stack_tokens(embeddings: Sequence[np.ndarray]) -> torch.Tensor:
    """Per-sentence ``(L, n_i, D)`` -> ``(sum n_i, L, D)`` float32."""
    parts = [torch.from_numpy(e).permute(1, 0, 2) for e in embeddings if e.shape[1]]
    return torch.cat(parts) if parts else torch.zeros(0, 3, 0)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> float:
    if len(y) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for k in range(0, len(y), batch):
            correct += int((model(x[k:k + batch]).argmax(-1) == y[k:k + batch]).sum())
    return correct / len(y)


def _word_baseline(train: Sequence[TaggedSentence], test: Sequence[TaggedSentence]) -> float:
    """Most frequent tag of each word form in train (unseen forms: the overall most frequent tag)."""
    from collections import Counter, defaultdict

    counts: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for s in train:
        for w, t in zip(s.forms, s.tags):
            counts[w][t] += 1
            overall[t] += 1
    default = overall.most_common(1)[0][0] if overall else ""
    hits = total = 0
    for s in test:
        for w, t in zip(s.forms, s.tags):
            guess = counts[w].most_common(1)[0][0] if w in counts else default
            hits += guess == t
            total += 1
    return hits / max(total, 1)


def pos_probe(embedder: ElmoEmbedder, train: Sequence[TaggedSentence], dev: Sequence[TaggedSentence],
              test: Sequence[TaggedSentence], epochs: int = 20, lr: float = 3e-3, batch_size: int = 256,
              seed: int = 0, progress: bool = False) -> PosProbeResult:
    """Train a linear UPOS probe per representation on frozen biLM layers.

    Args:
        embedder: the frozen model (use :func:`load_embedder`).
        train, dev, test: tagged sentences; dev picks the epoch (test is only read at that epoch's model).
        epochs: passes over the training tokens (Adam, mini-batches of ``batch_size`` tokens).
        seed: torch seed for initialisation and shuffling (each representation starts from the same seed).

    Returns:
        :class:`PosProbeResult`; keys ``"0"``, ``"1"``, ``"2"`` (one layer) and ``"mix"`` (learned scalar mix).
    """
    if not train or not test:
        raise UserError(f"POS probe needs training and test sentences, found {len(train)} and {len(test)}")
    dev = dev or test
    tagset = sorted({t for s in train for t in s.tags})
    tag_id = {t: i for i, t in enumerate(tagset)}

    def labels(sents: Sequence[TaggedSentence]) -> torch.Tensor:
        # a tag never seen in train can never be predicted: it counts as an error (id -1 never matches)
        return torch.tensor([tag_id.get(t, -1) for s in sents for t in s.tags], dtype=torch.long)

    feats = {}
    for name, sents in (("train", train), ("dev", dev), ("test", test)):
        feats[name] = _stack_tokens(embed_tokens(embedder, [s.forms for s in sents], progress=progress,
                                                 desc=f"embedding {name}"))
    y = {name: labels(s) for name, s in (("train", train), ("dev", dev), ("test", test))}
    mean = feats["train"].mean(0, keepdim=True)
    std = feats["train"].std(0, keepdim=True).clamp_min(1e-6)
    x = {name: (f - mean) / std for name, f in feats.items()}
    n_layers, dim = x["train"].shape[1], x["train"].shape[2]

    test_acc, dev_acc, best_epoch = {}, {}, {}
    mix_weights: list[float] = []
    for key, layer in [(str(j), j) for j in range(n_layers)] + [("mix", None)]:
        torch.manual_seed(seed)
        model = _Probe(n_layers, dim, len(tagset), layer)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        best = (-1.0, 0, float("nan"), [])
        n = len(y["train"])
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for k in range(0, n, batch_size):
                idx = perm[k:k + batch_size]
                loss = nn.functional.cross_entropy(model(x["train"][idx]), y["train"][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            acc_dev = _accuracy(model, x["dev"], y["dev"])
            if acc_dev > best[0]:
                weights = (torch.softmax(torch.cat(list(model.mix.scalar_parameters)), 0).tolist()
                           if model.mix is not None else [])
                best = (acc_dev, epoch, _accuracy(model, x["test"], y["test"]), weights)
            logger.debug("probe %s epoch %d: dev %.4f", key, epoch, acc_dev)
        dev_acc[key], best_epoch[key], test_acc[key] = best[0], best[1], best[2]
        if layer is None:
            mix_weights = best[3]
        logger.info("POS probe %s: dev %.4f test %.4f (epoch %d)", key, best[0], best[2], best[1])
    return PosProbeResult(test_acc, dev_acc, best_epoch, mix_weights, _word_baseline(train, test), len(tagset),
                          {k: len(v) for k, v in y.items()})


# ---------------------------------------------------------------------------------------------- WiC probe
def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` maximising accuracy of ``score >= t`` -> True; returns ``(t, accuracy)``.

    Candidates are midpoints between consecutive distinct sorted scores (plus one below and one above all);
    ties in accuracy go to the smallest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"expected two non-empty 1-D arrays of equal length, found {scores.shape}, {labels.shape}")
    order = np.argsort(scores, kind="stable")
    s, lab = scores[order], labels[order]
    # predicting True for positions >= i: correct = (#False before i) + (#True from i on)
    false_before = np.concatenate([[0], np.cumsum(~lab)])
    true_after = np.concatenate([np.cumsum(lab[::-1])[::-1], [0]])
    correct = false_before + true_after
    # only cut between distinct scores: cut i is valid when i == 0, i == n or s[i-1] < s[i]
    valid = np.ones(len(s) + 1, dtype=bool)
    valid[1:-1] = s[:-1] < s[1:]
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        t = s[0] - 1.0
    elif i == len(s):
        t = s[-1] + 1.0
    else:
        t = 0.5 * (s[i - 1] + s[i])
    return float(t), float(correct[i]) / len(s)


@dataclass
class WicProbeResult:
    """Per representation (``"0"``, ``"1"``, ``"2"``, ``"average"``): threshold and accuracy per split."""

    threshold: dict[str, float]
    accuracy: dict[str, dict[str, float]]
    threshold_split: str
    n_pairs: dict[str, int]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def wic_scores(embedder: ElmoEmbedder, pairs: Sequence[WicPair], progress: bool = False,
               desc: str = "embedding") -> dict[str, np.ndarray]:
    """Cosine similarity of the target's two vectors per representation: ``{"0", "1", "2", "average"}`` -> (N,)."""
    sentences = [p.context1 for p in pairs] + [p.context2 for p in pairs]
    embs = embed_tokens(embedder, sentences, progress=progress, desc=desc)
    n = len(pairs)
    v1 = np.stack([embs[i][:, p.index1] for i, p in enumerate(pairs)]) if n else np.zeros((0, 3, 1))
    v2 = np.stack([embs[n + i][:, p.index2] for i, p in enumerate(pairs)]) if n else np.zeros((0, 3, 1))
    out = {str(j): _cosine(v1[:, j], v2[:, j]) for j in range(v1.shape[1])}
    out["average"] = _cosine(v1.mean(1), v2.mean(1))
    return out


def wic_probe(embedder: ElmoEmbedder, splits: dict[str, Sequence[WicPair]], threshold_split: str = "train",
              progress: bool = False) -> WicProbeResult:
    """Cosine-threshold WiC accuracy per representation.

    Args:
        splits: ``{"train": pairs, "dev": pairs, "test": pairs}`` (any subset holding ``threshold_split``'s parts).
        threshold_split: ``"train"``, ``"dev"`` or ``"train+dev"``: where the threshold is chosen.
    """
    parts = threshold_split.split("+")
    missing = [p for p in parts if p not in splits]
    if missing:
        raise UserError(f"threshold split {threshold_split!r} needs {missing}, which were not given")
    scores = {name: wic_scores(embedder, pairs, progress, desc=f"embedding {name}") for name, pairs in splits.items()}
    labels = {name: np.array([p.label for p in pairs], dtype=bool) for name, pairs in splits.items()}
    keys = list(next(iter(scores.values())).keys())
    thresholds, accuracy = {}, {}
    for key in keys:
        fit_scores = np.concatenate([scores[p][key] for p in parts])
        fit_labels = np.concatenate([labels[p] for p in parts])
        t, _ = best_threshold(fit_scores, fit_labels)
        thresholds[key] = t
        accuracy[key] = {name: float(((scores[name][key] >= t) == labels[name]).mean()) if len(labels[name])
                         else math.nan for name in splits}
    return WicProbeResult(thresholds, accuracy, threshold_split, {k: len(v) for k, v in splits.items()})


# ---------------------------------------------------------------------------------------------- word senses
#: cosine similarities closer than this count as a tie (identical vectors, up to float rounding)
TIE_TOLERANCE = 1e-5


@dataclass
class SenseResult:
    """Leave-one-out nearest-neighbour sense accuracy per representation, overall and per word.

    ``neighbour[key][i]`` is the index of the nearest other occurrence of the same word for occurrence ``i``
    (the first of a tie).
    """

    accuracy: dict[str, float]
    per_word: dict[str, dict[str, float]]
    neighbour: dict[str, list[int]]


def sense_vectors(embeddings: Sequence[np.ndarray], positions: Sequence[int]) -> dict[str, np.ndarray]:
    """Per sentence ``(3, n_i, D)`` and the position of the word in it -> ``{"0", "1", "2", "average"}`` -> (N, D)."""
    v = np.stack([e[:, k] for e, k in zip(embeddings, positions)])  # (N, 3, D)
    out = {str(j): v[:, j] for j in range(v.shape[1])}
    out["average"] = v.mean(1)
    return out


def nearest_neighbour_senses(vectors: dict[str, np.ndarray], words: Sequence[str], senses: Sequence[str],
                             exclude: Sequence[Sequence[str]] = ()) -> SenseResult:
    """Leave-one-out 1-nearest-neighbour (cosine) sense accuracy among occurrences of the same word.

    For occurrence ``i`` of word ``w`` the prediction is the sense of the most similar *other* occurrence of
    ``w``. When several neighbours tie (within :data:`TIE_TOLERANCE`; e.g. the token layer, where every
    occurrence of a word has the same vector) the occurrence scores the fraction of tied neighbours with its
    sense, the expected accuracy of breaking the tie at random. Words with one occurrence are skipped.

    ``exclude``: label sequences (one label per occurrence each); two occurrences that share a label in any
    of them are never neighbours (e.g. sentences with the same beginning or the same ending, so that matching
    those words is no help). Occurrences left without any candidate are skipped.
    """
    words_a, senses_a = np.asarray(words), np.asarray(senses)
    exclude_a = [np.asarray(labels) for labels in exclude]
    accuracy, per_word, neighbour = {}, {}, {}
    for key, v in vectors.items():
        v = np.asarray(v, dtype=np.float64)
        unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        credit = np.full(len(words_a), np.nan)
        nn_index = np.full(len(words_a), -1)
        for w in dict.fromkeys(words):
            idx = np.flatnonzero(words_a == w)
            if len(idx) < 2:
                continue
            sims = unit[idx] @ unit[idx].T
            np.fill_diagonal(sims, -np.inf)
            for labels in exclude_a:
                sims[labels[idx][:, None] == labels[idx][None, :]] = -np.inf
            has_candidate = np.isfinite(sims).any(axis=1)
            sims[~has_candidate] = 0.0  # no candidate left: skipped below
            best = sims.max(axis=1, keepdims=True)
            tied = sims >= best - TIE_TOLERANCE
            same = senses_a[idx][None, :] == senses_a[idx][:, None]
            credit[idx] = np.where(has_candidate, (tied & same).sum(1) / tied.sum(1), np.nan)
            nn_index[idx] = idx[sims.argmax(axis=1)]
        per_word[key] = {w: float(np.nanmean(credit[words_a == w])) for w in dict.fromkeys(words)
                         if np.isfinite(credit[words_a == w]).any()}
        accuracy[key] = float(np.nanmean(credit)) if np.isfinite(credit).any() else float("nan")
        neighbour[key] = nn_index.tolist()
    return SenseResult(accuracy, per_word, neighbour)
