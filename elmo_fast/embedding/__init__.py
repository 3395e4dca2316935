"""The embed pipeline: read -> batch -> embed -> write, bounded memory, resumable, safe outputs.

Modules (one-way: :mod:`.job` uses :mod:`.steps`, which uses the others; the model is passed in, never imported):

* :mod:`.reader` -- lazy, validating line reader; input scan into hashed chunks.
* :mod:`.batching` -- length-sorted (stateless) or input-order (stateful) batches of a chunk.
* :mod:`.index` -- ``sentence_to_index`` built on disk (SQLite) and streamed into the hdf5 file.
* :mod:`.writer` -- chunk files and their merge into AllenNLP's hdf5 layout (and shards).
* :mod:`.checkpoint` -- resume fingerprints of chunks.
* :mod:`.paths` -- output/input checks before any work, temporary names, dead-run cleanup.
* :mod:`.distributed` -- torchrun: blocks of chunks per rank, plan broadcast, failure agreement.
* :mod:`.space` -- the disk-space budget, checked before the first chunk is embedded.
* :mod:`.isolated` -- hdf5 writes in child processes (a failed write is an error, not a crash).
* :mod:`.steps` -- the scan, embed and merge steps and the agreement between processes.
* :mod:`.job` -- :func:`embed_to_hdf5`: argument and path checks, the lock, the steps in order, cleanup.
"""
from .batching import chunk_batches, length_groups
from .distributed import rank_share
from .job import DEFAULT_CHUNK_LINES, EmbedReport, embed_to_hdf5
from .reader import InputFileError, read_sentences
from .writer import OUTPUT_FORMATS

__all__ = ["embed_to_hdf5", "EmbedReport", "DEFAULT_CHUNK_LINES", "InputFileError", "read_sentences",
           "length_groups", "chunk_batches", "rank_share", "OUTPUT_FORMATS"]
