"""text -> vectors -> dataset -> sequences. Corpora are read (``corpora``) and cut into chunks
(``chunking``), encoded by a sentence-transformers model with a fingerprint of its whole pipeline
(``encoders``), given article-disjoint splits (``splits``) and written as a dataset folder with its
FAISS index (``build``, ``datasets``, ``index``); ``interop`` imports the seeds' ``.npz`` files and
``synth`` writes synthetic sets at scale. ``Dataset.sequences`` gives index views, never copies.
"""
