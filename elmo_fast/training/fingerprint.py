"""What a run was trained on, checked on ``--resume``: the corpus file list and sizes, the vocabulary coverage."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Sequence

from ..data import SPECIAL_TOKENS, Vocabulary, iter_shard_sentences

__all__ = ["corpus_fingerprint", "compare_corpus", "vocabulary_coverage", "warn_about_coverage", "COVERAGE_WARN_BELOW",
           "COVERAGE_MAX_TOKENS"]

logger = logging.getLogger(__name__)

#: a --vocab covering less than this fraction of the corpus tokens is warned about loudly
COVERAGE_WARN_BELOW = 0.5
#: the coverage check reads at most this many corpus tokens (files in order)
COVERAGE_MAX_TOKENS = 5_000_000


def corpus_fingerprint(files: Sequence[str]) -> dict[str, Any]:
    """``{"files": [[path, size], ...], "digest": hex}``: the training files (in data order) and their sizes in
    bytes. The digest covers file *names* (not folders, so a moved corpus still matches) and sizes."""
    entries = [[os.path.abspath(f), int(os.path.getsize(f))] for f in files]
    h = hashlib.sha256()
    for path, size in entries:
        h.update(f"{os.path.basename(path)}\t{size}\n".encode("utf-8", "surrogateescape"))
    return {"files": entries, "digest": h.hexdigest()[:16]}


def compare_corpus(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """None when the corpus is unchanged, else a short description of the first difference."""
    if saved.get("digest") == now["digest"]:
        return None
    old = [(os.path.basename(p), int(s)) for p, s in saved.get("files", [])]
    new = [(os.path.basename(p), int(s)) for p, s in now["files"]]
    if len(old) != len(new):
        gone = sorted({n for n, _ in old} - {n for n, _ in new})
        added = sorted({n for n, _ in new} - {n for n, _ in old})
        detail = f"{len(old)} file(s) then, {len(new)} now"
        if gone:
            detail += f"; missing now: {', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}"
        if added:
            detail += f"; new: {', '.join(added[:3])}{', ...' if len(added) > 3 else ''}"
        return detail
    for (on, os_), (nn, ns) in zip(old, new):
        if on != nn:
            return f"file {on} is now {nn}"
        if os_ != ns:
            return f"{nn} was {os_} bytes, now {ns}"
    return "the file list differs"


def vocabulary_coverage(vocab: Vocabulary, files: Sequence[str], skip_bad_lines: bool = False,
                        max_tokens: int = COVERAGE_MAX_TOKENS) -> dict[str, Any]:
    """Fraction of corpus tokens that are vocabulary words (not ``<UNK>``), read from the first ``max_tokens``
    tokens of ``files`` in order, and how many vocabulary words never occur there.

    Returns:
        ``{"tokens", "covered", "fraction", "unused_words", "words", "complete"}``.
    """
    seen: set[str] = set()
    tokens = covered = 0
    index = vocab.index
    complete = True
    for path in files:
        for sent in iter_shard_sentences(path, skip_bad_lines=skip_bad_lines):
            tokens += len(sent)
            for w in sent:
                if w in index:
                    covered += 1
                    seen.add(w)
            if tokens >= max_tokens:
                complete = False
                break
        if not complete:
            break
    words = [t for t in vocab.tokens if t not in SPECIAL_TOKENS and t]
    unused = sum(1 for t in words if t not in seen)
    return {"tokens": tokens, "covered": covered, "fraction": covered / tokens if tokens else 0.0,
            "unused_words": unused, "words": len(words), "complete": complete}


def warn_about_coverage(vocab_source: str, coverage: dict[str, Any],
                        threshold: float = COVERAGE_WARN_BELOW) -> bool:
    """Log the coverage warnings; True when the loud (below-threshold) one was given."""
    scope = "the corpus" if coverage["complete"] else f"the first {coverage['tokens']} corpus tokens"
    loud = coverage["tokens"] > 0 and coverage["fraction"] < threshold
    if loud:
        logger.warning("VOCABULARY DOES NOT FIT THE CORPUS: %s covers only %.1f%% of the tokens of %s (%d of %d); "
                       "every other token is trained as the target <UNK>. Check that it is the vocabulary of this "
                       "corpus (same tokenization, same case), or leave out --vocab to build one from the corpus",
                       vocab_source, 100.0 * coverage["fraction"], scope, coverage["covered"], coverage["tokens"])
    if coverage["words"] and coverage["unused_words"]:
        log = logger.warning if coverage["unused_words"] == coverage["words"] else logger.info
        log("%s: %d of its %d words never occur in %s", vocab_source, coverage["unused_words"], coverage["words"],
            scope)
    return loud
