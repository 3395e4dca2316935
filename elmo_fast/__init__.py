"""elmo-fast: a fast, AllenNLP-compatible ELMo engine.

Drop-in API: :func:`batch_to_ids`, :class:`Elmo`, :class:`ElmoEmbedder`, :class:`ScalarMix`, :class:`BiLM`.
"""
from .chars import CharacterMapper, batch_to_ids
from .embedder import ElmoEmbedder
from .nn.bilm import BiLM, add_sentence_boundaries, remove_sentence_boundaries
from .nn.elmo import Elmo
from .nn.scalar_mix import ScalarMix
from .functional import full_softmax_loss, sampled_softmax_loss
from .nn.softmax import log_uniform_sample
from .options import ElmoOptions, load_options, preset
from .runtime import retain_freed_memory
from .vocab import read_vocab, write_vocab
from .weights import read_softmax_weights, read_weights, write_softmax_weights, write_weights

__version__ = "0.1.0"

__all__ = ["batch_to_ids", "CharacterMapper", "Elmo", "ElmoEmbedder", "ScalarMix", "BiLM", "ElmoOptions",
           "load_options", "preset", "read_weights", "write_weights", "read_softmax_weights",
           "write_softmax_weights", "read_vocab", "write_vocab", "add_sentence_boundaries",
           "remove_sentence_boundaries", "sampled_softmax_loss", "full_softmax_loss", "log_uniform_sample",
           "retain_freed_memory"]
