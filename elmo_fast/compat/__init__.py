"""Compatibility surfaces for code written against other ELMo libraries.

* :mod:`elmo_fast.compat.allennlp`: AllenNLP's names and signatures (``Elmo``, ``_ElmoBiLm``,
  ``_ElmoCharacterEncoder``, ``ElmoLstm``, ``ElmoTokenEmbedder``, ``ElmoEmbedder``, ``batch_to_ids``,
  ``remove_sentence_boundaries``, ``elmo_command``), so that the migration is an import line.
* :mod:`elmo_fast.compat.modules`: the module classes themselves (imported by :class:`elmo_fast.Elmo`).
"""
