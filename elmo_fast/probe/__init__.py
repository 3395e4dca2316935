"""What the layers know: a linear POS probe (CoNLL-U) and a WiC cosine-threshold probe
(docs/numerics.md#reported-results).

Two modules, one job each: :mod:`~elmo_fast.probe.readers` (CoNLL-U, WiC, locating the shared data) and
:mod:`~elmo_fast.probe.probes` (the probes and the demo's nearest-neighbour senses).

The biLM is frozen; each probe reads its three layers (0 = token layer, 1, 2 = LSTM layers) per token.

* **POS** (:func:`pos_probe`): a softmax-regression classifier from one layer's vector to the UPOS tag, trained
  on the train file, epoch chosen on dev, accuracy reported on test; for layer 0, 1, 2 and for a learned
  scalar mix (``ScalarMix`` over the three layers, trained jointly with the classifier). Each layer is
  standardised with per-feature mean and standard deviation from the training tokens first (a fixed affine map,
  so it changes the optimisation only). The paper's analysis: PTB POS 97.3 from layer 1, 96.8 from layer 2.
* **WiC** (:func:`wic_probe`): for each pair, the cosine similarity of the target word's two vectors; a
  single threshold per layer (chosen to maximise accuracy on the chosen split) decides "same sense".

Embedding is stateless (every batch starts from zero LSTM state) so that results do not depend on the order
of the sentences.
"""
from __future__ import annotations

from .probes import (TIE_TOLERANCE, PosProbeResult, SenseResult, WicProbeResult, best_threshold, embed_tokens,
                     load_embedder, nearest_neighbour_senses, pos_probe, sense_vectors, wic_probe, wic_scores)
from .readers import ConlluError, TaggedSentence, WicError, WicPair, find_shared_data, read_conllu, read_wic

__all__ = ["ConlluError", "WicError", "TaggedSentence", "WicPair", "read_conllu", "read_wic", "find_shared_data",
           "load_embedder", "embed_tokens", "pos_probe", "wic_probe", "best_threshold", "PosProbeResult",
           "WicProbeResult", "SenseResult", "sense_vectors", "nearest_neighbour_senses", "wic_scores",
           "TIE_TOLERANCE"]
