"""The jobs built on the training core: each runs the core (or its outputs) for one purpose.

    pipeline          the main job: every stage on the embedded corpus (`bigssl pipeline`)
    corpora           the pipeline's corpora: making, preparing, labeled-fraction pools
    claims            the pipeline's claim checks (paired bootstrap intervals)
    error_tables      the pipeline's and the experiments' WER tables
    data_efficiency   fine-tuning at several labeled fractions (`bigssl experiment`)
    pseudo_label      labeling a split with a teacher, unit by unit, and filtering
    pseudo_label_job  one set-up of that job for `bigssl pseudo-label` and the Beam runner
    beam_pseudo_label the same labeling as an Apache Beam pipeline
    embeddings        per-layer utterance embeddings of a prepared corpus (`bigssl embed`)
    probes            layer-wise probes on those embeddings
    aot               ahead-of-time compilation for a TPU topology (`bigssl compile`)
    flops             analytic model FLOPs of a train step

Jobs may import the training core, the experiment module and `bigssl_tasks`; the commands
and the gin seam import the jobs, never the reverse (docs/architecture.md).
"""
