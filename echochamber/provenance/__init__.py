"""Provenance: trace generations back to the pretraining documents they echo (docs/provenance.md).

    engine   the suffix-array library, behind one function (swap it there)
    index    the suffix array of train.bin and batched searches over it (built on first use, cached)
    rebuild  the document map of shards built before maps existed, recovered from their spec
    tracer   Tracer (per-generation provenance) and summarise (a batch's pooled shares)
    files    `echochamber trace`: a JSONL file of generations in, the same lines with provenance out

The document map it reads (which document and source every token of train.bin belongs to) is part
of the shards folder and is written with it: echochamber.data.docmap.
"""
