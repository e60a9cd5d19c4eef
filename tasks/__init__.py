"""seqio tasks of bigssl_jax (installed as `bigssl_tasks`).

    vocab           transcript normalisation, sentencepiece training and loading
    preprocessors   sample-rate check, audio decoding, tokenisation, length filter
    corpus_tasks    unlabeled / labeled tasks of every split in the corpus registry
    pseudo_labeled  the pseudo-labeled record layout and its task factory
    registration    idempotent adds to seqio's global registries
    toy_corpus      a tiny synthetic prepared corpus for tests and benchmarks

Importing this package (or any module above) does not import seqio or TensorFlow;
they are imported when a task is registered or read.
"""
