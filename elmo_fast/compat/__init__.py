"""Compatibility surfaces for code written against other ELMo libraries.

* :mod:`elmo_fast.compat.allennlp`: AllenNLP's names and signatures (``Elmo``, ``_ElmoBiLm``,
  ``_ElmoCharacterEncoder``, ``ElmoLstm``, ``ElmoTokenEmbedder``, ``ElmoEmbedder``, ``batch_to_ids``,
  ``remove_sentence_boundaries``, ``elmo_command``), so that the migration is an import line. They compute in
  AllenNLP's floating-point order by default (``order="allennlp"``, :mod:`elmo_fast.numerics`), so that their
  numbers stay within AllenNLP's own float32 noise on long text; ``order="fast"`` is the native API's default.
* :mod:`elmo_fast.compat.modules`: the module classes themselves, built on :mod:`elmo_fast.nn` (which never
  imports this package).
"""
