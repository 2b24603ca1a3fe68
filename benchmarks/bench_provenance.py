"""Provenance cost and calibration: index build speed and size, tracing speed, and the default n.

    .venv/bin/python benchmarks/bench_provenance.py                      # quickstart corpus + 100M synthetic
    .venv/bin/python benchmarks/bench_provenance.py --synthetic-tokens 5e6 --generations 2000   # quick check

1. The quickstart study's corpus (its mixture, built here): index build tokens/s, index bytes per
   token, and the calibration table behind the default n: for n = 4, 6, 8, 12, how many n-grams of
   held-out documents (val/<source>.bin, never trained on) are found in train.bin, in their own
   source, only in another source; and how many n-grams of the same documents with their tokens
   shuffled match by chance.
2. Tracing 10,000 generations (<= 192 tokens: copied training text, copies with 10 % of tokens
   changed, held-out documents, shuffled tokens) in RL-step batches of 128, beside the naive
   baseline in the same run: one Python set of n-gram tuples per source (shares and novelty only;
   it has no longest match). The two must agree on every count.
3. A synthetic corpus of `--synthetic-tokens` tokens (default 100M): quickstart documents drawn
   with replacement, 5 % of each copy's tokens changed, over four sources; same measurements (the
   naive sets run there only with --naive-large: they take many GiB of RAM).

Timings are CPU seconds of this process beside wall seconds: on a shared machine wall time measures
the neighbours. Report the CPU model (printed) with any number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model

from echochamber.data.docmap import DOC_MAP_DIR, encode_ids, write_document_map
from echochamber.data.mixture import build_shards
from echochamber.data.shards import open_shards
from echochamber.provenance.index import index_bytes
from echochamber.provenance.tracer import Tracer
from echochamber.study.config import load_study

MAX_TOKENS = 192
BATCH = 128  # the quickstart's rollouts per RL step


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def documents(stream: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    return [stream[a : b - 1] for a, b in zip(starts[:-1], starts[1:], strict=True)]  # EOS dropped


def val_documents(shards_dir: Path, eos: int) -> dict[str, list[np.ndarray]]:
    shards = open_shards(shards_dir)
    out = {}
    for name, stream in shards.val.items():
        stream = np.asarray(stream).astype(np.int64)
        ends = np.flatnonzero(stream == eos)
        out[name] = documents(stream, np.concatenate([[0], ends + 1]))
    return out


def index_report(label: str, tracer_fn, shards_dir: Path, tokens: int) -> Tracer:
    tracer, wall, cpu = timed(tracer_fn)
    size = index_bytes(shards_dir)
    doc_map = sum(f.stat().st_size for f in (shards_dir / DOC_MAP_DIR).iterdir())
    print(
        f"[{label}] index of {tokens:,} tokens: built in {wall:.1f} s wall / {cpu:.1f} s CPU "
        f"({tokens / wall:,.0f} tokens/s wall); {size / tokens:.2f} bytes/token "
        f"({size / 2**20:.1f} MiB; document map {doc_map / tokens:.2f} bytes/token more)"
    )
    return tracer


def calibrate(shards_dir: Path, rng: np.random.Generator) -> None:
    """How n trades chance matches against recognising a source's held-out text. Foreign text: GSM8K
    test solutions (real, human-written, never in this corpus) when the shared data folder is there."""
    foreign = _foreign_texts()
    print("\ncalibration: n-grams of held-out documents (never trained on) and of the same tokens shuffled")
    print(
        f"{'n':>3} {'source':>8} {'found':>7} {'own':>7} {'only other':>10} {'own alone':>9} {'shuffled found':>14}"
    )
    for n in (4, 6, 8, 12):
        tracer = Tracer(shards_dir, n=n)
        if foreign:
            traced = tracer.trace_texts(foreign)
            total = sum(p.ngrams for p in traced)
            found = 1 - sum(p.novel for p in traced) / total
            longest = np.median([p.longest_match.tokens for p in traced])
            print(
                f"{n:>3} {'gsm8k':>8} {found:>7.2%}   (foreign text: {len(foreign)} GSM8K test solutions; median longest match {longest:.0f} tokens)"
            )
        for name, docs in val_documents(shards_dir, tracer.eos).items():
            held = tracer.trace_ids([d.tolist() for d in docs])
            shuffled = tracer.trace_ids([rng.permutation(d).tolist() for d in docs])
            total = sum(p.ngrams for p in held)
            found = total - sum(p.novel for p in held)
            own = sum(p.found[name] for p in held)
            alone = sum(p.only[name] for p in held)
            shuffled_total = sum(p.ngrams for p in shuffled)
            shuffled_found = shuffled_total - sum(p.novel for p in shuffled)
            print(
                f"{n:>3} {name:>8} {found / total:>7.1%} {own / total:>7.1%} {(found - own) / total:>10.1%} "
                f"{alone / total:>9.1%} {shuffled_found / max(shuffled_total, 1):>14.2%}"
            )


def _foreign_texts() -> list[str]:
    from echochamber.data.benchmarks import benchmark_records
    from echochamber.data.paths import data_dir

    folder = data_dir()
    return [r.solution for r in benchmark_records("gsm8k", folder)] if folder is not None else []


def generations(stream: np.ndarray, starts: np.ndarray, held_out: list[np.ndarray], count: int, rng) -> list:
    """Test generations: 40 % copied training text, 30 % copies with 10 % of tokens changed, 20 %
    held-out documents, 10 % shuffled tokens; each up to 192 tokens, from a random point."""
    vocab_top = int(stream.max()) + 1
    out = []
    for kind in rng.choice(4, size=count, p=[0.4, 0.3, 0.2, 0.1]):
        if kind == 2 and held_out:
            g = held_out[rng.integers(len(held_out))]
        else:
            d = rng.integers(len(starts) - 2)
            g = stream[starts[d] : starts[d + 2]]  # two documents, EOS between: a segment boundary
        g = np.array(g[rng.integers(0, max(1, len(g) // 3)) :][:MAX_TOKENS], dtype=np.int64)
        if kind == 1:
            change = rng.random(len(g)) < 0.1
            g[change] = rng.integers(2, vocab_top, int(change.sum()))
        elif kind == 3:
            g = rng.permutation(g)
        out.append(g.tolist())
    return out


def trace_speed(label: str, tracer: Tracer, gens: list) -> list:
    lengths = [len(g) for g in gens]

    def run(batch: int) -> list:
        traced = []
        for i in range(0, len(gens), batch):
            traced += tracer.trace_ids(gens[i : i + batch])
        return traced

    traced, wall, cpu = timed(lambda: run(BATCH))
    _, wall_big, cpu_big = timed(lambda: run(1024))
    print(
        f"[{label}] traced {len(gens):,} generations (mean {np.mean(lengths):.0f} tokens, n={tracer.n}): "
        f"batches of {BATCH}: {len(gens) / cpu:,.0f} generations/s CPU ({len(gens) / wall:,.0f} wall), "
        f"{1000 * cpu / len(gens) * BATCH:.0f} ms CPU per {BATCH}; "
        f"batches of 1024: {len(gens) / cpu_big:,.0f}/s CPU ({len(gens) / wall_big:,.0f} wall)"
    )
    return traced


def naive_baseline(label: str, tracer: Tracer, stream: np.ndarray, gens: list, traced: list) -> float:
    """One Python set of n-gram tuples per source, the obvious way; checks the index's counts."""
    n, eos, doc_map = tracer.n, tracer.eos, tracer.doc_map
    sources = doc_map.source_of(np.arange(doc_map.n_documents))

    def build() -> list[set]:
        sets: list[set] = [set() for _ in tracer.sources]
        for d, (a, b) in enumerate(zip(doc_map.starts[:-1], doc_map.starts[1:], strict=True)):
            doc = stream[a : b - 1].tolist()
            sets[sources[d]].update(tuple(doc[i : i + n]) for i in range(len(doc) - n + 1))
        return sets

    rss = _rss()
    sets, wall, cpu = timed(build)
    grown = _rss() - rss

    def lookup() -> list[tuple[list[int], int]]:
        out = []
        for g in gens:
            found, novel = [0] * len(sets), 0
            for segment in _segments(g, eos):
                for i in range(len(segment) - n + 1):
                    gram = tuple(segment[i : i + n])
                    hits = [gram in s for s in sets]
                    novel += not any(hits)
                    found = [f + h for f, h in zip(found, hits, strict=True)]
            out.append((found, novel))
        return out

    counts, lwall, lcpu = timed(lookup)
    agree = all(
        [p.found[s] for s in tracer.sources] == f and p.novel == v
        for p, (f, v) in zip(traced, counts, strict=True)
    )
    print(
        f"[{label}] naive baseline (Python sets of {n}-gram tuples): built in {wall:.1f} s, ~{grown / 2**20:,.0f} MiB; "
        f"{len(gens) / lcpu:,.0f} generations/s CPU (shares only, no longest match); counts agree: {agree}"
    )
    if not agree:
        raise SystemExit("the index and the naive baseline disagree")
    return grown / len(stream)


def _segments(g: list[int], eos: int) -> list[list[int]]:
    out, current = [], []
    for t in g:
        if t == eos:
            out.append(current)
            current = []
        else:
            current.append(t)
    return [*out, current]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def synthetic_shards(base: Path, out: Path, tokens: int, rng: np.random.Generator) -> int:
    """`tokens` tokens of quickstart documents drawn with replacement, 5 % of each copy's tokens
    changed, labelled as four sources; a shards folder with a document map."""
    shards = open_shards(base)
    eos, stream = shards.manifest["eos_token_id"], np.asarray(shards.train)
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends + 1])
    lengths = np.diff(starts)
    picks = rng.integers(0, len(lengths), size=int(tokens / lengths.mean() * 1.02))
    picks = picks[: int(np.searchsorted(np.cumsum(lengths[picks]), tokens)) + 1]
    total = int(lengths[picks].sum())
    out.mkdir(parents=True)
    train = np.lib.format.open_memmap(out / "_tmp.npy", mode="w+", dtype=stream.dtype, shape=(total,))
    pos = 0
    for block in np.array_split(picks, max(1, len(picks) // 100_000)):
        lens = lengths[block]
        shift = np.repeat(starts[block] - (np.cumsum(lens) - lens), lens)
        chunk = stream[shift + np.arange(int(lens.sum()))].copy()
        change = (rng.random(len(chunk)) < 0.05) & (chunk != eos)
        chunk[change] = rng.integers(2, shards.manifest["vocab_size"], int(change.sum()))
        train[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    train.flush()
    np.asarray(train).tofile(out / "train.bin")
    del train
    (out / "_tmp.npy").unlink()
    sources = ["s0", "s1", "s2", "s3"]
    doc_starts = np.concatenate([[0], np.cumsum(lengths[picks])])
    unique = len(lengths)  # distinct document u of source s: u's quickstart document, numbered per source
    documents = picks + unique * (np.arange(len(picks)) % 4)
    write_document_map(
        out / DOC_MAP_DIR,
        starts=doc_starts,
        documents=documents,
        source_first=np.arange(5) * unique,
        ids=encode_ids([f"{s}-{u}" for s in sources for u in range(unique)]),
    )
    manifest = {
        **shards.manifest,
        "train_tokens": total,
        "train_documents": len(picks),
        "sources": {s: {"val_tokens": 0} for s in sources},
        "spec_hash": f"synthetic-{tokens}",
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(shards.tokenizer_path, out / "tokenizer")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synthetic-tokens", type=float, default=1e8)
    parser.add_argument("--generations", type=int, default=10_000)
    parser.add_argument("--workdir", help="keep the corpora here (default: a temporary folder, removed)")
    parser.add_argument(
        "--naive-large", action="store_true", help="run the naive sets on the large corpus too"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_model()}; {len(os.sched_getaffinity(0))} cores usable; load average {os.getloadavg()}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_provenance_"))
    try:
        quick = work / "quickstart"
        if not (quick / "manifest.json").is_file():
            _, wall, _ = timed(
                lambda: build_shards(load_study(None, "quickstart", []).mixture, quick, progress=False)
            )
            print(f"built the quickstart mixture in {wall:.1f} s")
        shutil.rmtree(quick / "provenance", ignore_errors=True)
        tokens = open_shards(quick).manifest["train_tokens"]
        tracer = index_report("quickstart", lambda: Tracer(quick), quick, tokens)
        calibrate(quick, rng)
        stream = np.asarray(tracer.index.tokens).astype(np.int64)
        held = [d for docs in val_documents(quick, tracer.eos).values() for d in docs]
        gens = generations(stream, tracer.doc_map.starts, held, args.generations, rng)
        print()
        traced = trace_speed("quickstart", tracer, gens)
        naive_bytes = naive_baseline("quickstart", tracer, stream, gens, traced)

        synthetic = work / "synthetic"
        shutil.rmtree(synthetic, ignore_errors=True)
        total = synthetic_shards(quick, synthetic, int(args.synthetic_tokens), rng)
        print()
        tracer = index_report("synthetic", lambda: Tracer(synthetic), synthetic, total)
        stream = np.asarray(tracer.index.tokens).astype(np.int64)
        gens = generations(stream, tracer.doc_map.starts, held, args.generations, rng)
        traced = trace_speed("synthetic", tracer, gens)
        if args.naive_large:
            naive_baseline("synthetic", tracer, stream, gens, traced)
        else:
            print(
                f"[synthetic] naive baseline not run (--naive-large runs it): its sets would take at least "
                f"~{naive_bytes * total / 2**30:.1f} GiB ({naive_bytes:.0f} bytes/token at the quickstart; "
                "more where fewer n-grams repeat: ~7 GiB and growing at 100M tokens, when one try was stopped)"
            )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
