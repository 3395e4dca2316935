"""How far elmo-fast's numbers are from AllenNLP's on long real sentences.

Protocol: the first ``batches * batch`` non-blank, non-heading lines of WikiText-2 ``test.txt`` (the first 64
reach 286 tokens), a model of the ``original`` shape (P 512, C 4096, 2048 CNN filters) with random weights
(:func:`benchmarks.run.random_model`, scaled so the clips are active), written to ``options.json`` +
``weights.hdf5`` and loaded by every implementation. Batches are embedded in order with states carried (the
stateful default of both libraries), so batch 1 is the "one fresh batch" case and batches 2.. the
"states carried over" case. Reported per batch and per layer: the max absolute difference of the three
``(B, T + 2, 2P)`` activations.

Oracles (``--oracle``):

* ``allennlp``: AllenNLP's own ``_ElmoBiLm`` (float32), imported from an unpacked ``allennlp`` wheel given by
  ``--allennlp DIR`` (e.g. ``pip download allennlp==2.10.1 --no-deps`` + unzip, outside the project venv;
  never a project dependency). Only its ELMo modules are imported; the package ``__init__`` files (which pull
  spacy, transformers, ...) are replaced by empty packages. It runs once with 1 and once with 2 intra-op threads:
  AllenNLP's own thread-to-thread difference is the noise floor the target is stated against (elmo-fast within
  2x of it). With ``--float64`` AllenNLP is also run in float64 (the exact function, to show which side of the
  float32 noise each implementation is).
* ``float64``: when AllenNLP is not available: :class:`AllenNLPOrder`, AllenNLP's operation order written here
  (per step ``x W_xᵀ + (h W_hᵀ + b)`` with the +1 forget bias folded into ``b``, gates (i, f, g, o),
  ``i*g + f*c``, clip, ``(o * tanh c) W_Pᵀ``, clip, residual ``y + x``) in float64.

elmo-fast's order: ``--order allennlp`` builds the models with ``BiLM(order="allennlp")`` (the fast token encoder in
AllenNLP's order of operations, every biLSTM product through the BLAS; the compat classes' default), ``--order
fast`` (or nothing) the native default.

Run: ``.venv/bin/python benchmarks/allennlp_parity.py --allennlp /tmp/anlp_pkgs`` (about 20 min on 2 cores);
``--backends fast --order allennlp --threads 1 --oracle-cache FILE`` reuses the AllenNLP runs of an earlier call
(same batches and shape) and takes ~7 min for five batches of 64 lines.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baseline import BaselineElmo  # noqa: E402
from benchmarks.run import random_model  # noqa: E402
from elmo_fast import numerics  # noqa: E402
from elmo_fast.chars import BOS_IDS, EOS_IDS, batch_to_ids  # noqa: E402
from elmo_fast.nn.bilm import BiLM, add_sentence_boundaries, token_mask  # noqa: E402

logger = logging.getLogger("allennlp_parity")

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "test.txt"


# ---------------------------------------------------------------------------------------------- AllenNLP import
def import_allennlp_elmo(root: str) -> types.ModuleType:
    """``allennlp.modules.elmo`` from an unpacked wheel at ``root``, without the heavy package ``__init__``s.

    The packages on the import path are created empty (``__path__`` only), and the handful of names the ELMo
    modules import from elsewhere in AllenNLP (file caching, registrable base classes, the data pipeline
    used only by AllenNLP's own ``batch_to_ids``) are given minimal stand-ins.
    """
    if "allennlp.modules.elmo" in sys.modules:
        return sys.modules["allennlp.modules.elmo"]
    base = Path(root)
    if not (base / "allennlp" / "modules" / "elmo.py").is_file():
        raise FileNotFoundError(f"--allennlp {root}: expected an unpacked allennlp wheel (allennlp/modules/elmo.py)")

    def package(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = [str(base.joinpath(*name.split(".")))]
        sys.modules[name] = m
        return m

    def module(name: str, **attrs: object) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    for name in ("allennlp", "allennlp.common", "allennlp.nn", "allennlp.modules", "allennlp.data",
                 "allennlp.data.token_indexers", "allennlp.data.tokenizers", "allennlp.modules.token_embedders"):
        package(name)
    sys.modules["allennlp.common"].FromParams = object  # type: ignore[attr-defined]
    sys.modules["allennlp.common"].Registrable = object  # type: ignore[attr-defined]

    def lazy_groups_of(iterable, size):
        it = iter(iterable)
        while chunk := list(itertools.islice(it, size)):
            yield chunk

    module("allennlp.common.util", int_to_device=lambda d: d, is_distributed=lambda: False,
           is_global_primary=lambda: True, lazy_groups_of=lazy_groups_of)
    module("allennlp.common.file_utils", cached_path=lambda p: p)
    module("allennlp.nn.initializers", block_orthogonal=lambda *a, **k: None)  # weights are loaded after init
    for name, attr in (("allennlp.data.instance", "Instance"), ("allennlp.data.tokenizers.token_class", "Token"),
                       ("allennlp.data.vocabulary", "Vocabulary"), ("allennlp.data.batch", "Batch"),
                       ("allennlp.data.fields", "TextField")):
        module(name, **{attr: object})

    class ELMoCharacterMapper:  # AllenNLP stores the raw symbols (it adds 1 itself)
        beginning_of_sentence_characters = [int(v) - 1 for v in BOS_IDS]
        end_of_sentence_characters = [int(v) - 1 for v in EOS_IDS]
        bos_token, eos_token = "<S>", "</S>"

    module("allennlp.data.token_indexers.elmo_indexer", ELMoCharacterMapper=ELMoCharacterMapper,
           ELMoTokenCharactersIndexer=object)
    elmo = importlib.import_module("allennlp.modules.elmo")
    elmo.batch_to_ids = batch_to_ids  # AllenNLP's goes through its data pipeline; the ids are identical
    return elmo


# ---------------------------------------------------------------------------------------------- float64 oracle
class AllenNLPOrder:
    """AllenNLP's ``_ElmoBiLm`` operation order (stateful, :class:`BaselineElmo`'s per-step cell) in ``dtype``."""

    def __init__(self, bilm: BiLM, dtype: torch.dtype = torch.float64) -> None:
        self.net = BaselineElmo(bilm).to(dtype)
        self.dtype = dtype
        self.states: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, char_ids: torch.Tensor) -> dict:
        net = self.net
        ids, mask = add_sentence_boundaries(char_ids, token_mask(char_ids), net.bos_ids, net.eos_ids)
        emb = net.encode(ids)
        lengths = mask.long().sum(1)
        batch = emb.shape[0]
        o = net.options.lstm
        P, C, L = o.projection_dim, o.dim, o.n_layers
        h_all = emb.new_zeros(L, batch, 2 * P)
        c_all = emb.new_zeros(L, batch, 2 * C)
        if self.states is not None:  # AllenNLP's slots: same row index, new rows start at zero
            n = min(batch, self.states[0].shape[1])
            h_all[:, :n], c_all[:, :n] = self.states[0][:, :n], self.states[1][:, :n]
        sorted_len, order = torch.sort(lengths, descending=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch)
        lens = sorted_len.tolist()
        outs, new_h, new_c = [], [], []
        for d in (0, 1):
            inputs, per_layer, hs, cs = emb[order], [], [], []
            for layer, cell in enumerate(net.cells[d]):
                h0 = h_all[layer, order, d * P:(d + 1) * P]
                c0 = c_all[layer, order, d * C:(d + 1) * C]
                y, h, c = net._cell_forward(cell, inputs, lens, h0, c0, backward=d == 1)
                if layer > 0:
                    y = y + inputs
                per_layer.append(y[inverse])
                hs.append(h[inverse])
                cs.append(c[inverse])
                inputs = y
            outs.append(per_layer)
            new_h.append(torch.stack(hs))
            new_c.append(torch.stack(cs))
        h_new, c_new = torch.cat(new_h, -1), torch.cat(new_c, -1)
        if self.states is None or self.states[0].shape[1] <= batch:
            self.states = (h_new, c_new)
        else:
            self.states[0][:, :batch], self.states[1][:, :batch] = h_new, c_new
        fmask = mask.unsqueeze(-1).to(emb.dtype)
        layers = [torch.cat([emb, emb], -1) * fmask] + [torch.cat([a, b], -1) for a, b in zip(*outs)]
        return {"activations": layers, "mask": mask}


# ---------------------------------------------------------------------------------------------- runs
def read_lines(path: Path, n: int) -> list[list[str]]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("="):
                lines.append(s.split())
                if len(lines) == n:
                    break
    return lines


#: seconds each run of :func:`run_batches` took (name -> seconds), for the tokens/s column
TIMES: dict[str, float] = {}


def run_batches(model, batches: list[torch.Tensor], threads: int, name: str = "") -> list[list[torch.Tensor]]:
    """Every batch in order (states carried), ``threads`` intra-op threads; activations as computed (float32, or
    float64 for a float64 oracle): differences are taken in float64 per tensor (:func:`max_diffs`), so that five
    batches of 64 long lines of several runs fit in memory (as float64 they need ~10 GB). The model time of the
    run (batches only, the first call's weight preparation included) goes to ``TIMES[name]``."""
    torch.set_num_threads(threads)
    out = []
    total = 0.0
    with torch.no_grad():
        for k, ids in enumerate(batches):
            t = time.perf_counter()
            res = model(ids)
            total += time.perf_counter() - t
            out.append([a.detach().clone() for a in res["activations"]])
            logger.info("  batch %d: %.1f s", k + 1, time.perf_counter() - t)
    if name:
        TIMES[name] = total
    return out


def max_diffs(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> list[list[float]]:
    """Per batch and layer, the max absolute difference (in float64)."""
    return [[float((x.double() - y.double()).abs().max()) for x, y in zip(la, lb)] for la, lb in zip(a, b)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="WikiText-2 test.txt (default: ../shared)")
    p.add_argument("--batch", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--batches", type=int, default=5, help="batches embedded in order, states carried (default 5)")
    p.add_argument("--shape", default="original", help="options preset of the random model (default original)")
    p.add_argument("--oracle", choices=["auto", "allennlp", "float64"], default="auto",
                   help="auto: AllenNLP when --allennlp is given, else the float64 AllenNLP-order oracle")
    p.add_argument("--allennlp", default=None,
                   help="directory of an unpacked allennlp wheel (throwaway, not a dependency)")
    p.add_argument("--float64", action="store_true", help="with AllenNLP: also run it in float64 (slow)")
    p.add_argument("--backends", default="fast,reference", help="elmo-fast backends to compare (comma-separated)")
    p.add_argument("--elmo-batches", type=int, default=None,
                   help="run elmo-fast on only the first N batches (the reference path is as slow as AllenNLP)")
    p.add_argument("--same-token-embeddings", action="store_true",
                   help="feed elmo-fast's biLSTM the oracle's token embeddings (its layer 0), to separate the "
                        "biLSTM's difference from the token encoder's")
    p.add_argument("--order", default=None,
                   help="elmo-fast's floating-point order(s), comma-separated (BiLM(order=...), see "
                        "elmo_fast.numerics): 'allennlp' = AllenNLP's order and bits, 'fast' = oneDNN's; with "
                        "several, each backend runs once per order (runs named BACKEND-ORDER); default: the process "
                        "default ('fast' unless ELMO_FAST_ONEDNN=0)")
    p.add_argument("--no-onednn", action="store_true",
                   help="fast path: every product through the BLAS (as AllenNLP) instead of oneDNN-packed weights, "
                        "as ELMO_FAST_ONEDNN=0 (the process default order becomes 'allennlp', which now also covers "
                        "the token encoder)")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts elmo-fast runs with (default 1,2)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    p.add_argument("--oracle-cache", type=Path, default=None,
                   help="keep the oracle runs in this file (outside the repo) and reuse them when the settings match")
    args = p.parse_args(argv)
    orders: list[str | None] = args.order.split(",") if args.order else [None]
    for order in orders:
        if order not in numerics.ORDERS:
            p.error(f"--order: expected names from {numerics.ORDERS}, found {order!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    oracle = args.oracle if args.oracle != "auto" else ("allennlp" if args.allennlp else "float64")
    if args.no_onednn:  # as ELMO_FAST_ONEDNN=0: every product of the fast path through the BLAS
        numerics._CURRENT.set(numerics.Numerics(order="allennlp"))

    sentences = read_lines(args.text, args.batch * args.batches)
    batches = [batch_to_ids(sentences[k * args.batch:(k + 1) * args.batch]) for k in range(args.batches)]
    logger.info("%d lines, longest %d tokens", len(sentences), max(len(s) for s in sentences))
    results: dict = {"oracle": oracle, "batch": args.batch, "batches": args.batches, "shape": args.shape,
                     "torch": torch.__version__, "order": args.order or numerics.current().order,
                     "tokens": sum(len(s) for s in sentences),
                     "same_token_embeddings": args.same_token_embeddings}
    with tempfile.TemporaryDirectory() as tmp:
        opt, wts = Path(tmp) / "options.json", Path(tmp) / "weights.hdf5"
        random_model(args.shape, "reference").save(opt, wts)
        runs: dict[str, list[list[torch.Tensor]]] = {}
        key = {k: results[k] for k in ("oracle", "batch", "batches", "shape")} | {"float64": args.float64}
        if args.oracle_cache and args.oracle_cache.is_file():
            cached = torch.load(args.oracle_cache, weights_only=True, mmap=True)  # read lazily from the file
            if cached["key"] == key:
                logger.info("oracle runs from %s", args.oracle_cache)
                runs = dict(cached["runs"])
        if runs:
            pass
        elif oracle == "allennlp":
            elmo_mod = import_allennlp_elmo(args.allennlp)
            for threads in (1, 2):
                logger.info("AllenNLP float32, %d thread(s)", threads)
                runs[f"allennlp_{threads}t"] = run_batches(elmo_mod._ElmoBiLm(str(opt), str(wts)), batches, threads,
                                                           f"allennlp_{threads}t")
            if args.float64:
                logger.info("AllenNLP float64")
                model64 = elmo_mod._ElmoBiLm(str(opt), str(wts)).double()
                runs["truth"] = run_batches(lambda ids: model64(ids), batches, 2)
        else:
            logger.info("float64 AllenNLP-order oracle")
            runs["truth"] = run_batches(AllenNLPOrder(BiLM.from_files(opt, wts, backend="reference")), batches, 2)
        if args.oracle_cache and not args.oracle_cache.is_file():
            torch.save({"key": key, "runs": {name: [[t if name == "truth" else t.float() for t in b] for b in run]
                                              for name, run in runs.items()}}, args.oracle_cache)
        names = [(backend, order, backend if len(orders) == 1 else f"{backend}-{order}")
                 for backend in args.backends.split(",") for order in orders]
        for backend, order, label in names:
            for threads in [int(t) for t in args.threads.split(",")]:
                logger.info("elmo-fast %s, %d thread(s)", label, threads)
                model = BiLM.from_files(opt, wts, backend=backend, order=order)
                inputs = batches[:args.elmo_batches]
                if args.same_token_embeddings:
                    oracle_run = runs["allennlp_1t" if oracle == "allennlp" else "truth"]
                    P = model.options.lstm.projection_dim
                    model_fn = model
                    embedded = {id(ids): oracle_run[k][0][..., :P].float() for k, ids in enumerate(inputs)}

                    def model(ids, _m=model_fn, _e=embedded):  # noqa: E731 - the oracle's layer 0 as input
                        mask = torch.arange(ids.shape[1] + 2)[None, :] < (token_mask(ids).sum(1) + 2)[:, None]
                        return _m.forward_embeddings(_e[id(ids)], mask)
                runs[f"{label}_{threads}t"] = run_batches(model, inputs, threads, f"{label}_{threads}t")
    ref = "allennlp_1t" if oracle == "allennlp" else "truth"
    table = {}
    for name, run in runs.items():
        if name == ref:
            continue
        table[f"{name} vs {ref}"] = max_diffs(run, runs[ref])
        if "truth" in runs and name != "truth":
            table[f"{name} vs truth"] = max_diffs(run, runs["truth"])
    if oracle == "allennlp":
        table["allennlp_2t vs allennlp_1t"] = max_diffs(runs["allennlp_2t"], runs["allennlp_1t"])
        for _, _, label in names:
            if f"{label}_2t" in runs:
                table[f"{label}_2t vs allennlp_2t"] = max_diffs(runs[f"{label}_2t"], runs["allennlp_2t"])
    results["max_abs_diff"] = table
    lines = sentences[:args.batch * (args.elmo_batches or args.batches)]
    elmo_tokens = sum(len(s) for s in lines)
    results["tokens_per_s"] = {name: (results["tokens"] if name.startswith("allennlp") else elmo_tokens) / sec
                               for name, sec in TIMES.items()}
    print(f"\nmax |difference| per batch (states carried) and layer [layer0, layer1, layer2]; oracle: {oracle}")
    for name, rows in table.items():
        print(f"{name:34s} " + "  ".join("[" + ", ".join(f"{v:.1e}" for v in r) + "]" for r in rows))
    if results["tokens_per_s"]:
        print("\ntokens/s (one run each, first call's weight preparation included; AllenNLP runs only when not cached)")
        for name, rate in results["tokens_per_s"].items():
            print(f"{name:34s} {rate:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
