"""Bounded memory: peak RSS of an embed child process must not grow with the input.

Two measurements, each a pair of input sizes in fresh subprocesses (``ru_maxrss`` of the child via ``wait4``):

* the pipeline alone (reader, batching, chunk files, merge, ``sentence_to_index``) with a trivial biLM-like
  module, 2,000 vs 20,000 lines of 40 tokens (0.5 vs 4.4 MB of text): the whole-input design this replaced
  held ~34x the input (~150 MB more here);
* the CLI with the tiny random model, 1,500 vs 8,000 lines: catches model-side growth such as oneDNN's
  per-shape memory (see ``elmo_fast.fast.packing._row_bucket``).

Measured allowances: the first chunk's buffers (~40 MB with the trivial module) and HDF5's own growth while a
file's first ~100,000 datasets are written (~30 MB, metadata cache and free lists; flat from there to 400,000,
checked by hand) are reached by the larger input only, so the larger input may use up to 80 MB more.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

MB = 1024  # ru_maxrss is in KiB

PIPELINE = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from elmo_fast.runtime import retain_freed_memory
    retain_freed_memory()
    from elmo_fast import ElmoEmbedder

    class Cheap(torch.nn.Module):
        stateful = False
        output_dim = 4
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))
        def prepare_inputs(self, sentences):
            return torch.tensor([len(s) for s in sentences])
        def forward(self, lengths):
            t = int(lengths.max())
            mask = torch.arange(t + 2)[None, :] < (lengths + 2)[:, None]
            x = mask[..., None].float() * self.w
            return {"activations": [x, x * 2, x * 3], "mask": mask}
        def reset_states(self):
            pass

    ElmoEmbedder.from_bilm(Cheap(), batch_size=64).embed_file(sys.argv[1], sys.argv[2], output_format="top",
                                                            progress=False)
""")


def _peak_rss_kb(cmd: list[str]) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert os.waitstatus_to_exitcode(status) == 0, err[-2000:]
    return usage.ru_maxrss


def _corpus(path, lines: int, tokens: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            f.write(" ".join(f"w{(i * 31 + k * 7) % 5003}" for k in range(tokens)) + "\n")


def test_pipeline_memory_does_not_grow_with_input(tmp_path):
    script = tmp_path / "embed.py"
    script.write_text(PIPELINE)
    peaks = []
    for n in (2000, 20000):
        src = tmp_path / f"in-{n}.txt"
        _corpus(src, n, 40)
        peaks.append(_peak_rss_kb([sys.executable, str(script), str(src), str(tmp_path / f"out-{n}.hdf5")]))
        assert (tmp_path / f"out-{n}.hdf5").exists()
    size = os.path.getsize(tmp_path / "in-20000.txt") / 2 ** 20
    growth = (peaks[1] - peaks[0]) / MB
    assert growth < 80, f"peak RSS {peaks[0] / MB:.0f} -> {peaks[1] / MB:.0f} MB for a {size:.1f} MB input"


@pytest.mark.slow
def test_cli_tiny_model_memory_does_not_grow_with_input(tiny_model, tmp_path):
    opt, w = tiny_model
    peaks = []
    for n in (1500, 8000):
        src = tmp_path / f"in-{n}.txt"
        _corpus(src, n, 6)
        peaks.append(_peak_rss_kb([sys.executable, "-m", "elmo_fast.cli", "embed", str(src),
                                   str(tmp_path / f"out-{n}.hdf5"), "--top", "--stateless", "--options-file", str(opt),
                                   "--weight-file", str(w), "--quiet", "--threads", "1"]))
    growth = (peaks[1] - peaks[0]) / MB
    assert growth < 60, f"peak RSS {peaks[0] / MB:.0f} -> {peaks[1] / MB:.0f} MB"


_H5_PROBE = r"""
import resource, sys, h5py, numpy as np
from elmo_fast.embedding.writer import OUTPUT_LIBVER
n, path = int(sys.argv[1]), sys.argv[2]
with h5py.File(path, "w", libver=OUTPUT_LIBVER) as f:
    a = np.zeros((3, 8), np.float32)
    for i in range(n):
        f.create_dataset(str(i), data=a)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_merged_output_format_keeps_writer_memory_flat(tmp_path):
    """The merged file's format (dense link storage) must not hold per-dataset metadata until close: with the
    default 1.8 format, 300k datasets in one group cost ~11 MB more than 15k (and more beyond: 113 vs 70 MB
    at 400k vs 100k datasets of 5 x 32); with OUTPUT_LIBVER, nothing measurable."""
    import subprocess
    import sys
    peaks = []
    for n in (15_000, 300_000):
        out = subprocess.run([sys.executable, "-c", _H5_PROBE, str(n), str(tmp_path / f"m{n}.h5")],
                             capture_output=True, text=True, timeout=300, check=True)
        peaks.append(int(out.stdout.strip()) / 1024)
    assert peaks[1] - peaks[0] < 5, f"peak RSS grew {peaks[1] - peaks[0]:.1f} MB from 15k to 300k datasets"


_REOPEN_PROBE = r"""
import resource, sys, numpy as np
from elmo_fast.embedding.writer import ReopeningWriter, write_float32
n, path, every = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ReopeningWriter.REOPEN_EVERY = every
a = np.zeros((12, 32), np.float32)  # a short sentence's top layer (2P = 32)
with ReopeningWriter(path) as w:
    for i in range(n):
        write_float32(w.file, str(i), a)
        w.wrote(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_merge_writer_memory_stays_flat_past_half_a_million_datasets(tmp_path):
    """The merge's writer (ReopeningWriter, as merge_chunks uses it) over 900k datasets of 12 x 32 peaks where it
    does over 150k. Kept open instead (REOPEN_EVERY = 10**9), the file's library state grows: +15.6 MB at 900k,
    ~+330 MB in the merge of a 1 GB input (with 3 x 8 datasets the growth is too small to see here). Also checks
    the file reads back."""
    import h5py
    from elmo_fast.embedding.writer import ReopeningWriter
    peaks = []
    for n in (150_000, 900_000):
        path = tmp_path / f"r{n}.h5"
        out = subprocess.run([sys.executable, "-c", _REOPEN_PROBE, str(n), str(path),
                              str(ReopeningWriter.REOPEN_EVERY)], capture_output=True, text=True, timeout=600,
                             check=True)
        peaks.append(int(out.stdout.strip()) / 1024)
        with h5py.File(path, "r") as f:
            assert len(f) == n and f[str(n - 1)].shape == (12, 32)
        os.remove(path)
    assert peaks[1] - peaks[0] < 5, f"peak RSS grew {peaks[1] - peaks[0]:.1f} MB from 150k to 900k datasets"
