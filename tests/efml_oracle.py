"""Small random ELMoForManyLangs models built with the ``elmoformanylangs`` package's own classes and saved
with its own ``save_model`` (the test oracle; a test-only dependency, see the Makefile's install recipe).

Import :func:`require_efml` first: it skips the calling test module with the reason when the package is not
importable (it needs ``overrides<5``, which needs ``typing-utils``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

#: characters of the test models (a space too: the package's char.dic reader turns it into U+3000)
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ.,!?-'0123456789éü ")
WORDS = ["the", "a", "cat", "sat", "on", "mat", ".", ",", "dog", "ran", "héllo", "Über", "x"]

#: two configurations: (A) word embedding + relu + both clips, (B) no word embedding, tanh, no cell clip
CONFIGS: dict[str, dict[str, Any]] = {
    "word+char": {"word_dim": 6, "char_dim": 5, "filters": [[1, 4], [2, 5], [3, 6]], "n_highway": 2,
                  "activation": "relu", "max_chars": 10, "projection_dim": 8, "dim": 12, "n_layers": 2,
                  "cell_clip": 3, "proj_clip": 3},
    "char-only": {"word_dim": 0, "char_dim": 4, "filters": [[1, 3], [3, 5], [4, 4]], "n_highway": 1,
                  "activation": "tanh", "max_chars": 8, "projection_dim": 6, "dim": 10, "n_layers": 2,
                  "cell_clip": 0, "proj_clip": 2},
}

#: awkward input: a 1-token sentence, words longer than max chars, unknown characters (Cyrillic, emoji,
#: U+3000), the literal marker tokens, an unknown word, an empty sentence
SENTENCES = [
    ["the", "cat", "sat", "on", "the", "mat", "."],
    ["x"],
    ["supercalifragilisticexpialidocious", "héllo", "Über", "dog", "ran", "extraordinarily"],
    ["жук", "😀", "a\u3000b", "<bos>", "<eos>", "unknownword", ","],
    [],
    ["dog", "ran", "on", "a", "mat", "!", "?", "the", "cat", "sat", "."],
]


def save_efml_dir(model_dir: Path, model: Any, arch: dict, char_lexicon: dict[str, int],
                  word_lexicon: dict[str, int], arch_name: str, config_extra: dict | None = None) -> None:
    """Write a model folder as the package's trainer does: char.dic, word.dic, the architecture file,
    config.json and the package's own ``save_model`` pickles."""
    with open(model_dir / "char.dic", "w", encoding="utf-8") as f:
        for ch, i in char_lexicon.items():
            print(f"{ch}\t{i}", file=f)
    with open(model_dir / "word.dic", "w", encoding="utf-8") as f:
        for w, i in word_lexicon.items():
            print(f"{w}\t{i}", file=f)
    (model_dir / arch_name).write_text(json.dumps(arch), encoding="utf-8")
    config = {"config_path": arch_name, **(config_extra or {})}
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    model.save_model(str(model_dir), False)


def require_efml():
    """Import ``elmoformanylangs`` or skip with the reason."""
    try:
        import elmoformanylangs  # noqa: F401
        from elmoformanylangs import biLM  # noqa: F401
    except Exception as e:  # ImportError, or overrides>=5's TypeError at import time
        if os.environ.get("ELMO_FAST_REQUIRE_ORACLES", "") not in ("", "0"):  # `make test` installs it
            pytest.fail(f"elmoformanylangs (test-only oracle) is not importable: {type(e).__name__}: {e}; "
                        "`make test` installs it, so its absence is an install failure")
        pytest.skip(f"elmoformanylangs (test-only oracle) is not importable: {type(e).__name__}: {e}; "
                    "install it with `pip install --no-deps elmoformanylangs 'overrides<5' typing-utils` "
                    "(the Makefile's install recipe does)")
    logging.getLogger("elmoformanylangs").setLevel(logging.WARNING)
    import elmoformanylangs
    return elmoformanylangs


def architecture(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "encoder": {"name": "elmo", "projection_dim": c["projection_dim"], "cell_clip": c["cell_clip"],
                    "proj_clip": c["proj_clip"], "dim": c["dim"], "n_layers": c["n_layers"]},
        "token_embedder": {"name": "cnn", "activation": c["activation"], "filters": c["filters"],
                           "n_highway": c["n_highway"], "word_dim": c["word_dim"], "char_dim": c["char_dim"],
                           "max_characters_per_token": c["max_chars"]},
        "classifier": {"name": "softmax"},
        "dropout": 0.1,
    }


#: a model bilm-tf's format can hold (no word embedding, 50 characters per token) for `elmo-fast convert`
CONVERTIBLE = {"word_dim": 0, "char_dim": 4, "filters": [[1, 3], [2, 4], [5, 5]], "n_highway": 2,
               "activation": "relu", "max_chars": 50, "projection_dim": 6, "dim": 10, "n_layers": 2,
               "cell_clip": 3, "proj_clip": 3}
ASCII_CHARS = [ch for ch in CHARS if ord(ch) < 128 and ch != " "]


def build_model(model_dir: Path, name: str, seed: int = 0, scale: float = 0.4, *,
                config: dict[str, Any] | None = None, chars: list[str] | None = None) -> Path:
    """Write a random EFML model directory for configuration ``name`` (or ``config``) with the package's
    classes; ``chars``: the characters of its char.dic (default :data:`CHARS`)."""
    require_efml()
    from elmoformanylangs.biLM import Model
    from elmoformanylangs.modules.embedding_layer import EmbeddingLayer

    c = config if config is not None else CONFIGS[name]
    model_dir.mkdir(parents=True, exist_ok=True)
    arch = architecture(c)
    # the package's trainer: characters in order of appearance, then the specials; words after 4 specials
    char_lexicon: dict[str, int] = {}
    for ch in (CHARS if chars is None else chars):
        char_lexicon.setdefault(ch, len(char_lexicon))
    for special in ("<bos>", "<eos>", "<oov>", "<pad>", "<bow>", "<eow>"):
        char_lexicon.setdefault(special, len(char_lexicon))
    word_lexicon: dict[str, int] = {}
    for special in ("<oov>", "<bos>", "<eos>", "<pad>"):
        word_lexicon[special] = len(word_lexicon)
    for w in WORDS:
        word_lexicon.setdefault(w, len(word_lexicon))

    torch.manual_seed(seed)
    char_layer = EmbeddingLayer(c["char_dim"], char_lexicon, fix_emb=False)
    word_layer = EmbeddingLayer(c["word_dim"], word_lexicon, fix_emb=False) if c["word_dim"] > 0 else None
    model = Model(arch, word_layer, char_layer, len(word_lexicon))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every stored value random (biases included), so a mis-mapped one shows
        for module in (model.token_embedder, model.encoder):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    save_efml_dir(model_dir, model, arch, char_lexicon, word_lexicon, "cnn.json",
                  {"seed": seed, "model": str(model_dir)})
    return model_dir


def oracle_embed(embedder, sentences, output_layer: int):
    """The package's ``sents2elmo`` from fresh states, all sentences in one batch."""
    embedder.model.encoder.reset_states()
    embedder.batch_size = max(64, len(sentences))
    with torch.no_grad():
        return embedder.sents2elmo(sentences, output_layer=output_layer)
