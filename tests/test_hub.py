"""Model files by URL and public name (elmo_fast.hub), against an HTTP server on 127.0.0.1 that each test starts
and stops itself: downloads, the cache, offline mode, failures (nothing cached), one download for concurrent
callers, every entry point (library classes and CLI flags) and AllenNLP's canonical snippet. No test reaches
beyond the loopback interface."""
from __future__ import annotations

import http.server
import logging
import shutil
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import elmo_fast
from elmo_fast import hub
from elmo_fast.cli import main
from elmo_fast.compat import allennlp as A
from helpers import write_model

ORIGINAL = hub.PUBLIC_MODELS["original"]
SMALL = hub.PUBLIC_MODELS["small"]
SENTENCES = [["First", "sentence", "."], ["Another", "."]]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder; ``/truncated/X`` announces X's full length and sends half of it; ``/slow/X``
    waits before answering X. Every GET is recorded."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        if self.path.startswith("/slow/"):
            time.sleep(self.server.delay)
            self.path = self.path[len("/slow"):]
        if self.path.startswith("/truncated/"):
            data = (Path(self.directory) / self.path[len("/truncated/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 (port chosen by the OS) serving ``root``."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.root = root
        handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.delay = delay
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch, tmp_path):
    """A fresh cache; no proxy (requests would send even 127.0.0.1 through one); short timeouts; the public
    names point at a port nobody listens on unless a test points them at its server."""
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ELMO_FAST_OFFLINE", raising=False)
    monkeypatch.setenv("ELMO_FAST_MODELS_URL", "http://127.0.0.1:9/unused")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(hub, "TIMEOUT", 10.0)


@pytest.fixture
def served(tmp_path):
    """A server whose root holds a tiny model (``m/options.json``, ``m/weights.hdf5``)."""
    root = tmp_path / "www"
    write_model(root / "m")
    server = Server(root)
    yield server
    server.stop()


def _cache_files(tmp_path) -> list[str]:
    """Files in the cache, lock files aside (a lock file stays, empty, for the next download of that name)."""
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.parent.name != ".locks")


# ------------------------------------------------------------------------------------------------ basics
def test_url_is_downloaded_once_then_read_from_the_cache(served, tmp_path):
    o_url, w_url = f"{served.url}/m/options.json", f"{served.url}/m/weights.hdf5"
    o, w = hub.resolve(o_url, "options"), hub.resolve(w_url, "weights")
    assert Path(o).read_bytes() == (served.root / "m/options.json").read_bytes()
    assert Path(w).read_bytes() == (served.root / "m/weights.hdf5").read_bytes()
    assert Path(o).parent == Path(w).parent and Path(o).is_relative_to(tmp_path / "cache")
    assert served.requests == ["/m/options.json", "/m/weights.hdf5"]
    served.stop()  # the cache answers now
    assert hub.resolve(o_url, "options") == o and hub.resolve(w_url, "weights") == w
    assert hub.resolve(f"{served.url}/m", "model_dir") == str(Path(o).parent)
    model = elmo_fast.BiLM.from_files(o_url, w_url)
    assert model.options.lstm.projection_dim == 16


def test_local_paths_are_used_as_they_are(tiny_model, tmp_path, monkeypatch):
    opt, w = tiny_model
    assert hub.resolve(opt, "options") is opt and hub.resolve(str(w), "weights") == str(w)
    assert hub.resolve("no/such/file.json", "options") == "no/such/file.json"  # the loader reports it, as before
    monkeypatch.chdir(tmp_path)
    Path("original").mkdir()  # a local folder named like a public model wins
    assert hub.resolve("original", "model_dir") == "original"
    assert not (tmp_path / "cache").exists()  # no network, no cache


def test_public_names_and_allennlp_urls_share_the_cache(tmp_path, monkeypatch):
    root = tmp_path / "www"
    opt, w = write_model(root / "src")
    folder = root / SMALL.folder
    folder.mkdir()
    shutil.copy(opt, folder / SMALL.file_name("options"))
    shutil.copy(w, folder / SMALL.file_name("weights"))
    server = Server(root)
    try:
        monkeypatch.setenv("ELMO_FAST_MODELS_URL", server.url + "/")
        assert hub.model_urls("small")["weights"] == f"{server.url}/{SMALL.folder}/{SMALL.file_name('weights')}"
        for spelling in ("small", "Small", "elmo_2x1024_128_2048cnn_1xhighway", SMALL.folder):
            assert hub.public_model(spelling) is SMALL
        model_dir = hub.resolve("small", "model_dir")
        assert Path(model_dir) == tmp_path / "cache" / SMALL.folder
        assert sorted(p.name for p in Path(model_dir).iterdir()) == ["options.json", "weights.hdf5"]
        embedder = elmo_fast.ElmoEmbedder.from_pretrained("small")
        assert embedder.embed_sentence(["a", "b"]).shape == (3, 2, 32)
    finally:
        server.stop()
    n = len(server.requests)
    assert n == 2
    # AllenNLP's own URLs (either host) of that model are the same cache entries: no download, even offline
    monkeypatch.setenv("ELMO_FAST_OFFLINE", "1")
    for base in (hub.DEFAULT_MODELS_URL, "https://s3-us-west-2.amazonaws.com/allennlp/models/elmo"):
        url = f"{base}/{SMALL.folder}/{SMALL.file_name('weights')}"
        assert hub.resolve(url, "weights") == str(Path(model_dir) / "weights.hdf5")
    assert hub.resolve(f"{hub.DEFAULT_MODELS_URL}/{SMALL.folder}/", "model_dir") == model_dir
    assert hub.resolve("small", "options") == str(Path(model_dir) / "options.json")


def test_public_model_catalogue_spells_allennlps_urls(monkeypatch):
    monkeypatch.delenv("ELMO_FAST_MODELS_URL")
    base = "https://allennlp.s3.amazonaws.com/models/elmo"
    assert hub.model_urls("original") == {
        "options": f"{base}/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_options.json",
        "weights": f"{base}/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5"}
    assert hub.model_urls("original 5.5B")["weights"] == \
        f"{base}/2x4096_512_2048cnn_2xhighway_5.5B/elmo_2x4096_512_2048cnn_2xhighway_5.5B_weights.hdf5"
    assert hub.model_urls("medium")["options"].endswith("2x2048_256_2048cnn_1xhighway_options.json")


# ------------------------------------------------------------------------------------------------ failures
def test_offline_mode_never_touches_the_network(served, tmp_path, monkeypatch):
    url = f"{served.url}/m/weights.hdf5"
    monkeypatch.setenv("ELMO_FAST_OFFLINE", "1")
    with pytest.raises(hub.DownloadError) as e:
        hub.resolve(url, "weights")
    message = str(e.value)
    assert url in message and str(hub.cache_path(url)) in message and "ELMO_FAST_OFFLINE" in message
    assert "\n" not in message
    with pytest.raises(hub.DownloadError, match="ELMO_FAST_OFFLINE"):
        hub.resolve("original", "weights")
    assert served.requests == [] and _cache_files(tmp_path) == []
    monkeypatch.delenv("ELMO_FAST_OFFLINE")
    path = hub.resolve(url, "weights")
    monkeypatch.setenv("ELMO_FAST_OFFLINE", "1")
    assert hub.resolve(url, "weights") == path and len(served.requests) == 1


def test_http_error_names_the_url_and_caches_nothing(served, tmp_path):
    url = f"{served.url}/m/missing.hdf5"
    with pytest.raises(hub.DownloadError, match="HTTP 404") as e:
        hub.resolve(url, "weights")
    assert url in str(e.value)
    assert _cache_files(tmp_path) == []


def test_unreachable_server_names_the_url():
    with pytest.raises(hub.DownloadError, match="cannot connect") as e:
        hub.resolve("http://127.0.0.1:9/m/options.json", "options")
    assert "http://127.0.0.1:9/m/options.json" in str(e.value)


def test_truncated_transfer_caches_nothing(served, tmp_path):
    url = f"{served.url}/truncated/m/weights.hdf5"
    with pytest.raises(hub.DownloadError, match="truncated") as e:
        hub.resolve(url, "weights")
    assert url in str(e.value)
    assert _cache_files(tmp_path) == []


@pytest.mark.parametrize("name,content,kind,expected", [
    ("w.hdf5", b"<html>Access denied</html>", "weights", "without the HDF5 signature"),
    ("cut.hdf5", None, "weights", "truncated or damaged"),
    ("o.json", b"<html>Access denied</html>", "options", "do not parse"),
    ("list.json", b"[1, 2]", "options", "JSON object"),
])
def test_corrupt_file_is_named_and_not_cached(served, tmp_path, name, content, kind, expected):
    if content is None:  # a weight file cut short at the source: the server sends all it has
        full = (served.root / "m/weights.hdf5").read_bytes()
        content = full[:len(full) * 2 // 3]
    (served.root / name).write_bytes(content)
    url = f"{served.url}/{name}"
    with pytest.raises(hub.DownloadError, match=expected) as e:
        hub.resolve(url, kind)
    assert url in str(e.value) and "nothing was cached" in str(e.value)
    assert _cache_files(tmp_path) == []


def test_checksum_mismatch_is_refused(served, tmp_path):
    url = f"{served.url}/m/options.json"
    with pytest.raises(hub.DownloadError, match="SHA-256 mismatch"):
        hub.download(url, "options", sha256="0" * 64)
    assert _cache_files(tmp_path) == []
    import hashlib
    digest = hashlib.sha256((served.root / "m/options.json").read_bytes()).hexdigest()
    assert Path(hub.download(url, "options", sha256=digest)).is_file()


def test_concurrent_callers_share_one_download(tmp_path):
    root = tmp_path / "www"
    write_model(root / "m")
    server = Server(root, delay=0.5)
    try:
        url = f"{server.url}/slow/m/weights.hdf5"
        results, errors = [], []

        def fetch():
            try:
                results.append(hub.resolve(url, "weights"))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        threads = [threading.Thread(target=fetch) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        server.stop()
    assert errors == [] and len(results) == 3 and len(set(results)) == 1
    assert server.requests == ["/slow/m/weights.hdf5"]
    assert Path(results[0]).read_bytes() == (root / "m/weights.hdf5").read_bytes()


# ------------------------------------------------------------------------------------------------ entry points
def test_every_constructor_takes_urls(served):
    o_url, w_url, folder = f"{served.url}/m/options.json", f"{served.url}/m/weights.hdf5", f"{served.url}/m"
    ids = elmo_fast.batch_to_ids(SENTENCES)
    local = [str(served.root / "m/options.json"), str(served.root / "m/weights.hdf5")]
    want = A.Elmo(*local, 1, dropout=0.0)(ids)["elmo_representations"][0]
    got = A.Elmo(o_url, w_url, 1, dropout=0.0)(ids)["elmo_representations"][0]
    assert torch.equal(got, want)
    assert torch.equal(elmo_fast.Elmo(o_url, w_url, 1, dropout=0.0, order="allennlp")(ids)["elmo_representations"][0],
                       want)
    assert A._ElmoBiLm(o_url, w_url)(ids)["mask"].shape == (2, 5)
    assert A._ElmoCharacterEncoder(o_url, w_url)(ids)["token_embedding"].shape == (2, 5, 16)
    assert A.ElmoTokenEmbedder(o_url, w_url, dropout=0.0)(ids).shape == (2, 3, 32)
    lstm = A.ElmoLstm(16, 16, 64, 2, memory_cell_clip_value=3, state_projection_clip_value=3)
    lstm.load_weights(w_url)
    embedder = elmo_fast.ElmoEmbedder(o_url, w_url)
    assert embedder.source_files() == [hub.resolve(o_url, "options"), hub.resolve(w_url, "weights")]
    assert np.array_equal(A.ElmoEmbedder(o_url, w_url).embed_sentence(SENTENCES[0]),
                          A.ElmoEmbedder(*local).embed_sentence(SENTENCES[0]))
    assert elmo_fast.ElmoEmbedder.from_pretrained(folder).embed_sentence(["x"]).shape == (3, 1, 32)
    from elmo_fast.probe import load_embedder
    assert load_embedder(folder + "/").embed_sentence(["x"]).shape == (3, 1, 32)
    assert served.requests == ["/m/options.json", "/m/weights.hdf5"]  # everything else came from the cache


def test_cli_flags_take_urls(served, tmp_path, caplog):
    (tmp_path / "in.txt").write_text("a b c\nd e\n")
    o_url, w_url = f"{served.url}/m/options.json", f"{served.url}/m/weights.hdf5"
    out = tmp_path / "out.hdf5"
    assert main(["embed", str(tmp_path / "in.txt"), str(out), "--top", "--options-file", o_url, "--weight-file",
                 w_url, "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        assert f["0"].shape == (3, 32)
    out2 = tmp_path / "out2.hdf5"
    assert main(["embed", str(tmp_path / "in.txt"), str(out2), "--top", "--model-dir", f"{served.url}/m",
                 "--quiet"]) == 0
    with h5py.File(out, "r") as a, h5py.File(out2, "r") as b:
        assert np.array_equal(a["1"][...], b["1"][...])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = main(["embed", str(tmp_path / "in.txt"), str(tmp_path / "out3.hdf5"), "--top", "--options-file",
                   o_url, "--weight-file", f"{served.url}/m/nothing.hdf5", "--quiet"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("--weight-file" in m and f"{served.url}/m/nothing.hdf5" in m and "404" in m for m in errors), errors
    assert not (tmp_path / "out3.hdf5").exists()


def test_allennlp_elmo_command_takes_urls(served, tmp_path):
    import argparse
    (tmp_path / "in.txt").write_text("a b c\n")
    args = argparse.Namespace(input_file=str(tmp_path / "in.txt"), output_file=str(tmp_path / "out.hdf5"),
                              all=True, top=False, average=False, options_file=f"{served.url}/m/options.json",
                              weight_file=f"{served.url}/m/weights.hdf5", batch_size=2, cuda_device=-1,
                              forget_sentences=False, use_sentence_keys=False)
    assert A.elmo_command(args) == 0
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert f["0"].shape == (3, 3, 32)


def test_allennlps_canonical_snippet_runs_against_a_local_server(fixtures_dir, tmp_path):
    """AllenNLP's documented usage, verbatim but for the host: URLs in, representations out, equal to the
    same model read from local files."""
    root = tmp_path / "www" / "models" / "elmo" / ORIGINAL.folder
    root.mkdir(parents=True)
    shutil.copy(fixtures_dir / "allennlp" / "options.json", root / ORIGINAL.file_name("options"))
    shutil.copy(fixtures_dir / "allennlp" / "lm_weights.hdf5", root / ORIGINAL.file_name("weights"))
    server = Server(tmp_path / "www")
    try:
        base = f"{server.url}/models/elmo/{ORIGINAL.folder}"
        options_file = f"{base}/elmo_2x4096_512_2048cnn_2xhighway_options.json"
        weight_file = f"{base}/elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5"

        from elmo_fast.compat.allennlp import Elmo, batch_to_ids
        elmo = Elmo(options_file, weight_file, 2, dropout=0)
        sentences = [["First", "sentence", "."], ["Another", "."]]
        character_ids = batch_to_ids(sentences)
        embeddings = elmo(character_ids)
    finally:
        server.stop()
    reps = embeddings["elmo_representations"]
    assert len(reps) == 2 and reps[0].shape == (2, 3, 32) and embeddings["mask"].tolist() == \
        [[True, True, True], [True, True, False]]
    local = Elmo(str(fixtures_dir / "allennlp" / "options.json"), str(fixtures_dir / "allennlp" / "lm_weights.hdf5"),
                 2, dropout=0)
    assert torch.equal(local(character_ids)["elmo_representations"][0], reps[0])
    assert len(server.requests) == 2



def test_evaluate_takes_the_url_of_an_export(tmp_path, capsys):
    from elmo_fast.data import Vocabulary
    from elmo_fast.options import preset
    from elmo_fast.training import LanguageModel, export_model, init_weights

    words = [f"w{i}" for i in range(6)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + words)
    model = LanguageModel(preset("tiny"), len(vocab), backend="reference")
    init_weights(model.bilm, model.softmax_weight, model.softmax_bias, torch.Generator().manual_seed(0))
    export_model(model, vocab, str(tmp_path / "www" / "export"))
    held = tmp_path / "held.txt"
    held.write_text("w1 w2 w3\nw4 w5\n")
    server = Server(tmp_path / "www")
    try:
        args = ["--heldout", str(held), "--batch-size", "2", "--backend", "reference", "--quiet"]
        assert main(["evaluate", f"{server.url}/export/"] + args) == 0
        remote = capsys.readouterr().out.splitlines()[-1]
        assert main(["evaluate", str(tmp_path / "www" / "export")] + args) == 0
        assert capsys.readouterr().out.splitlines()[-1] == remote
    finally:
        server.stop()
    assert sorted(server.requests) == ["/export/options.json", "/export/softmax_weights.hdf5", "/export/vocab.txt",
                                       "/export/weights.hdf5"]
