"""Provenance: trace generations back to the pretraining documents they echo (docs/provenance.md).

    docmap   which document and source every token of train.bin belongs to (written with the shards)
    engine   the suffix-array library, behind one function (swap it there)
    index    the suffix array of train.bin and batched searches over it (built on first use, cached)
    tracer   Tracer (per-generation provenance) and summarise (a batch's pooled shares)
    files    `echochamber trace`: a JSONL file of generations in, the same lines with provenance out

Nothing is imported here: echochamber.data.mixture imports docmap while it is itself being imported.
"""
