"""ELMoForManyLangs at the published size: elmo-fast vs the ``elmoformanylangs`` package on WikiText-2 lines.

Builds (once, cached in ``--work-dir``) a random model with the published architecture
(``cnn_50_100_512_4096_sample.json``: word embedding 100, char embedding 50, filters up to 1024 wide x 7,
2 highway layers, P = 512, C = 4096, 2 layers) using the package's own classes and initialisation and its
own save format, with a char/word vocabulary taken from the text; then embeds the first ``--lines``
non-empty lines of ``--text`` in one fresh batch (the package from fresh states, elmo-fast stateless) and
prints the max |difference| per layer and the wall time of each.

    .venv/bin/python benchmarks/efml_parity.py --lines 16 --threads 1

Needs the test-only oracle (``pip install --no-deps elmoformanylangs 'overrides<5' typing-utils``; the
Makefile installs it) and ``../shared/data/wikitext-2`` (or ``--text``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from efml_oracle import save_efml_dir  # noqa: E402  (the package's save format, shared with the tests)

REPO = Path(__file__).resolve().parents[1]


def build(work: Path, lines: list[list[str]]) -> Path:
    from elmoformanylangs.biLM import Model
    from elmoformanylangs.modules.embedding_layer import EmbeddingLayer
    from elmo_fast.efml import CHAR_SPECIALS, PUBLISHED_ARCHITECTURE

    name = "cnn_50_100_512_4096_sample.json"
    if (work / "encoder.pkl").is_file():
        return work
    work.mkdir(parents=True, exist_ok=True)
    arch = json.loads(json.dumps(PUBLISHED_ARCHITECTURE))
    arch["classifier"] = {"name": "softmax"}
    chars: dict[str, int] = {}
    words: dict[str, int] = {}
    for special in ("<oov>", "<bos>", "<eos>", "<pad>"):
        words[special] = len(words)
    for sentence in lines:
        for w in sentence:
            words.setdefault(w, len(words))
            for ch in w:
                chars.setdefault(ch, len(chars))
    for special in CHAR_SPECIALS:
        chars.setdefault(special, len(chars))
    torch.manual_seed(0)
    model = Model(arch, EmbeddingLayer(100, words, fix_emb=False), EmbeddingLayer(50, chars, fix_emb=False), 10)
    save_efml_dir(work, model, arch, chars, words, name)
    return work


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "wikitext-2" / "test.txt"),
                   help="whitespace-tokenized text, one sentence per line (default: WikiText-2 test)")
    p.add_argument("--lines", type=int, default=16, help="non-empty lines embedded in one batch (default 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--work-dir", default="/tmp/elmo-fast-efml-bench", help="where the random model is cached")
    p.add_argument("--backends", default="reference,fast", help="elmo-fast backends to time (comma-separated)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("elmoformanylangs").setLevel(logging.WARNING)
    import elmoformanylangs
    from elmo_fast.efml import load_efml, sents2elmo

    with open(args.text, encoding="utf-8") as f:
        lines = [line.split() for line in f if line.split()]
    sents = lines[:args.lines]
    model_dir = build(Path(args.work_dir), lines[:3000])
    embedder = elmoformanylangs.Embedder(str(model_dir), batch_size=len(sents))
    embedder.model.encoder.reset_states()
    start = time.perf_counter()
    with torch.no_grad():
        ref = embedder.sents2elmo(sents, output_layer=-2)
    print(f"{len(sents)} lines, {sum(map(len, sents))} tokens, longest {max(map(len, sents))}, "
          f"{args.threads} thread(s); package {time.perf_counter() - start:.2f} s")
    for backend in args.backends.split(","):
        model = load_efml(model_dir, stateful=False, backend=backend)
        sents2elmo(model, sents[:2], -2)  # warm-up
        start = time.perf_counter()
        got = sents2elmo(model, sents, -2, batch_size=len(sents))
        took = time.perf_counter() - start
        errs = [max(float(np.abs(a[k] - b[k]).max()) for a, b in zip(got, ref)) for k in range(3)]
        print(f"elmo-fast {backend}: {took:.2f} s; max |diff| per layer {', '.join(f'{e:.2e}' for e in errs)} "
              f"(max |value| {max(float(np.abs(b).max()) for b in ref):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
