"""Per-generation provenance: how much of a generation the model could have echoed, and from where.

For a generation of tokens g (encoded as the model produced it: a continuation after the prompt),
with n-grams counted only where they hold no EOS:

    source_share[s] = |{n-grams of g found in source s's documents of train.bin}| / |n-grams of g|
    unique_share[s] = |{... found in source s and in no other source}| / |n-grams of g|
    novelty         = |{n-grams of g found nowhere in train.bin}| / |n-grams of g|
    longest_match   = the longest span of g found verbatim in train.bin, where it starts in g, and
                      the source, document id and offset of one document holding it

source_share can sum past 1 (an n-gram in two sources counts for both); unique_share + shared +
novelty = 1. A generation with fewer than n tokens has no n-grams: its shares and novelty are None,
never 0. The default n is 8 tokens; docs/provenance.md gives the measurement behind it.

`Tracer` is built once per run (it indexes train.bin on first use) and traces a batch at a time:
the whole batch's n-grams are looked up together (`CorpusIndex`), and identical generations (a
collapsed policy's samples) are traced once. `summarise` pools a batch into one metrics line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echochamber.data.docmap import DocumentMap
from echochamber.errors import UserError
from echochamber.provenance.index import CorpusIndex, open_index
from echochamber.provenance.rebuild import ensure_document_map

DEFAULT_N = 8
_MATCH_FIELDS = ("tokens", "start", "source", "doc", "doc_offset", "text")


@dataclass(frozen=True)
class LongestMatch:
    """The longest span of a generation found verbatim in train.bin (tokens 0: none at all)."""

    tokens: int
    start: int  # its first token's index in the generation
    source: str | None  # a source and document holding it (when several do: the one the search lands by)
    doc: str | None  # the document's stable id (see echochamber.data.docmap)
    doc_offset: int | None  # where the span starts inside that document, in tokens
    text: str | None = None  # the span, decoded (set when tracing text)
    # Where the span starts in train.bin: what finds the document's text around it (never written
    # out: an offset into one shuffle of the corpus means nothing outside its index).
    position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"tokens": self.tokens, "start": self.start, "source": self.source, "doc": self.doc}
        out["doc_offset"] = self.doc_offset
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class Provenance:
    """One generation's n-gram counts by source and its longest verbatim match."""

    n: int
    ngrams: int
    found: dict[str, int]  # n-grams found in each source (an n-gram may count in several)
    only: dict[str, int]  # n-grams found in that source and no other
    novel: int  # n-grams found nowhere
    longest_match: LongestMatch

    def _share(self, count: int) -> float | None:
        return count / self.ngrams if self.ngrams else None

    @property
    def source_share(self) -> dict[str, float | None]:
        return {s: self._share(c) for s, c in self.found.items()}

    @property
    def unique_share(self) -> dict[str, float | None]:
        return {s: self._share(c) for s, c in self.only.items()}

    @property
    def novelty(self) -> float | None:
        return self._share(self.novel)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ngrams": self.ngrams,
            "longest_match": self.longest_match.to_dict(),
            "source_share": self.source_share,
            "unique_share": self.unique_share,
            "novelty": self.novelty,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """The inverse of `to_dict` (a share times the n-gram count gives back the exact count), so a
        batch can be pooled again from the rows a run folder holds."""
        ngrams = int(data["ngrams"])

        def count(share: float | None) -> int:
            return round(share * ngrams) if share is not None else 0

        match = data["longest_match"]
        return cls(
            n=int(data["n"]),
            ngrams=ngrams,
            found={s: count(v) for s, v in data["source_share"].items()},
            only={s: count(v) for s, v in data["unique_share"].items()},
            novel=count(data["novelty"]),
            longest_match=LongestMatch(**{key: match.get(key) for key in _MATCH_FIELDS}),
        )


class Tracer:
    """Traces generations of one run's model back to the documents of its train.bin.

    Build it once (`Tracer(shards_dir)`, or `Tracer.for_path(run_or_shards_dir)`, which also finds
    the spec to rebuild an old folder's document map); the first one for a shards folder builds the
    index there (cached). Then `trace_ids` (token ids, as RL rollouts hold them) or `trace_texts`.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        *,
        n: int = DEFAULT_N,
        tokenizer: Any = None,
        spec: Any = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        from echochamber.data.shards import open_shards

        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        shards = open_shards(shards_dir)
        self.n = n
        self.sources = tuple(shards.manifest["sources"])
        self.eos = shards.manifest["eos_token_id"]
        self._tokenizer = tokenizer
        self.tokenizer_path = shards.tokenizer_path
        self.doc_map: DocumentMap = ensure_document_map(Path(shards_dir), shards.manifest, spec, say)
        self.index: CorpusIndex = open_index(Path(shards_dir), shards.manifest, self.doc_map, say=say)

    @classmethod
    def for_path(cls, path: str | Path, **kwargs: Any) -> Tracer:
        """A study run folder (shards in RUN/shards, spec in RUN/config.yaml) or a shards folder."""
        shards_dir, spec = locate_shards(Path(path))
        return cls(shards_dir, spec=spec, **kwargs)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from echochamber.data.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Generations as the model produced them: continuations after `prompt + "\\n\\n"`, which is
        how a document's solution part is encoded (a plain-text document is `text + EOS`)."""
        from echochamber.data.tokenizer import encode_documents

        return [ids[:-1] for ids in encode_documents(self.tokenizer, [""] * len(texts), list(texts))]

    def trace_texts(self, texts: Sequence[str]) -> list[Provenance]:
        """`trace_ids` of the encoded texts, each longest match with its text."""
        ids = self.encode(texts)
        traced = self.trace_ids(ids)
        return [_with_text(p, self.tokenizer, g) for p, g in zip(traced, ids, strict=True)]

    def trace_ids(self, generations: Sequence[Sequence[int]]) -> list[Provenance]:
        """Provenance of each generation (token ids; EOS, where present, ends a segment)."""
        distinct: dict[bytes, int] = {}
        arrays: list[np.ndarray] = []
        slot = []
        for g in generations:
            a = np.asarray(g, dtype=np.int64)
            key = a.tobytes()
            if key not in distinct:
                distinct[key] = len(arrays)
                arrays.append(a)
            slot.append(distinct[key])
        traced = self._trace_distinct(arrays) if arrays else []
        return [traced[i] for i in slot]

    def _trace_distinct(self, arrays: list[np.ndarray]) -> list[Provenance]:
        batch = _Batch.of(arrays, self.eos)
        counts, hits, lo, hi = self._count_ngrams(batch)
        spans = self._longest_matches(batch, hits, lo, hi)
        docs = self.doc_map.document_at(np.maximum(spans.position, 0))
        ngrams, found, only, novel = counts
        return [
            Provenance(
                n=self.n,
                ngrams=int(ngrams[g]),
                found=dict(zip(self.sources, map(int, found[g]), strict=True)),
                only=dict(zip(self.sources, map(int, only[g]), strict=True)),
                novel=int(novel[g]),
                longest_match=self._match(
                    int(spans.length[g]),
                    int(spans.start[g] - batch.offset[g]),
                    int(spans.position[g]),
                    int(docs[g]),
                ),
            )
            for g in range(len(arrays))
        ]

    def _count_ngrams(
        self, batch: _Batch
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]:
        """Per generation: n-grams, found per source [g, S], found in one source alone [g, S], novel;
        and the positions starting a found n-gram with that n-gram's rank range. Each distinct
        n-gram of the batch is looked up once."""
        n, n_sources = self.n, len(self.sources)
        starts = np.flatnonzero(batch.width >= n)
        grams = batch.flat[starts[:, None] + np.arange(n)]
        unique, inverse = _unique_rows(grams, self.index.tokens.dtype)
        lo, hi = self.index.ngram_ranges(unique)
        seen = hi > lo
        in_source = np.zeros((len(unique), n_sources), dtype=bool)
        in_source[seen] = self.index.sources_in(lo[seen], hi[seen])
        found, by_source = seen[inverse], in_source[inverse]
        alone = by_source.sum(axis=1) == 1
        who = batch.owner[starts]

        def count(mask: np.ndarray) -> np.ndarray:
            return np.bincount(who[mask], minlength=batch.size)

        counts = (
            count(np.ones(len(starts), dtype=bool)),
            np.stack([count(by_source[:, s]) for s in range(n_sources)], axis=1),
            np.stack([count(by_source[:, s] & alone) for s in range(n_sources)], axis=1),
            count(~found),
        )
        return counts, starts[found], lo[inverse[found]], hi[inverse[found]]

    def _longest_matches(self, batch: _Batch, hits: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _Spans:
        """Each generation's longest verbatim span, searched from positions starting a found n-gram,
        inside that n-gram's range; for a generation with none, from every position with patterns of
        under n tokens (its longest match is shorter than n).

        A match of L tokens from position i makes the n-grams at i .. i+L-n all found, so L is at most
        n + (last position of i's run of found n-grams) - i. The run starts are searched first; then
        only the positions whose bound beats their generation's best so far (none, when a generation
        copies one document verbatim).
        """
        n = self.n
        spans = _Spans.empty(batch.size)
        run_start = np.ones(len(hits), dtype=bool)
        run_start[1:] = np.diff(hits) != 1
        run_end = hits[np.flatnonzero(np.append(run_start[1:], len(hits) > 0))]  # each run's last position
        bound = run_end[np.cumsum(run_start) - 1] - hits + n

        def search(chosen: np.ndarray) -> None:
            at, skip = hits[chosen], np.full(int(chosen.sum()), n, dtype=np.int64)
            found = self.index.longest_prefix(batch.flat, at, batch.width[at], lo[chosen], hi[chosen], skip)
            spans.keep(batch.owner[at], at, *found)

        search(run_start)
        search(~run_start & (bound > spans.length[batch.owner[hits]]))
        rest = np.flatnonzero(spans.start < 0)
        if rest.size:
            at = np.flatnonzero(np.isin(batch.owner, rest) & (batch.width > 0))
            first_lo, first_hi = self.index.prefix_range(batch.flat, at, 1)
            width = np.minimum(batch.width[at], max(n - 1, 1))
            one = np.ones(len(at), dtype=np.int64)
            spans.keep(
                batch.owner[at],
                at,
                *self.index.longest_prefix(batch.flat, at, width, first_lo, first_hi, one),
            )
        return spans

    def _match(self, tokens: int, start: int, position: int, document: int) -> LongestMatch:
        if tokens == 0 or position < 0:
            return LongestMatch(tokens=0, start=0, source=None, doc=None, doc_offset=None)
        source = self.sources[int(self.doc_map.source_of(np.array([document]))[0])]
        offset = position - int(self.doc_map.starts[document])
        return LongestMatch(tokens, start, source, self.doc_map.doc_id(document), offset, position=position)


@dataclass(frozen=True)
class _Batch:
    """Distinct generations laid end to end."""

    flat: np.ndarray  # every token, int64
    owner: np.ndarray  # the generation of each token
    offset: np.ndarray  # where each generation starts in `flat`
    width: np.ndarray  # tokens from each position to its segment's end: the next EOS (0 on an EOS) or
    # its generation's end, whichever comes first

    @property
    def size(self) -> int:
        return len(self.offset)

    @classmethod
    def of(cls, arrays: list[np.ndarray], eos: int) -> _Batch:
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays)
        positions = np.arange(len(flat))
        ends = np.repeat(np.cumsum(lengths), lengths)
        eos_at = np.append(np.flatnonzero(flat == eos), len(flat))
        width = np.minimum(eos_at[np.searchsorted(eos_at, positions, side="left")], ends) - positions
        owner = np.repeat(np.arange(len(arrays)), lengths)
        return cls(flat=flat, owner=owner, offset=np.cumsum(lengths) - lengths, width=width)


@dataclass(frozen=True)
class _Spans:
    """Per generation, the longest match so far: its start in `flat` (-1: none), length, train.bin position."""

    start: np.ndarray
    length: np.ndarray
    position: np.ndarray

    @classmethod
    def empty(cls, size: int) -> _Spans:
        return cls(np.full(size, -1, np.int64), np.zeros(size, np.int64), np.full(size, -1, np.int64))

    def keep(self, owner: np.ndarray, at: np.ndarray, length: np.ndarray, where: np.ndarray) -> None:
        """Take, per generation, the longest of these matches (the earliest in it among equals) where
        it is longer than the one held."""
        ok = where >= 0
        owner, at, length, where = owner[ok], at[ok], length[ok], where[ok]
        if not len(owner):
            return
        order = np.lexsort((at, -length, owner))
        first = order[np.concatenate([[True], owner[order][1:] != owner[order][:-1]])]
        better = length[first] > self.length[owner[first]]
        g, first = owner[first][better], first[better]
        self.start[g], self.length[g], self.position[g] = at[first], length[first], where[first]


def _unique_rows(grams: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(grams, axis=0, return_inverse=True), 5x faster: each row's tokens, big-endian in the
    corpus' dtype, are one fixed-size byte string (ids that do not fit are never in the corpus)."""
    fits = np.dtype(dtype).newbyteorder(">")
    keys = np.ascontiguousarray(np.minimum(grams, np.iinfo(dtype).max).astype(fits))
    keys = keys.view(f"V{fits.itemsize * grams.shape[1]}").reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return grams[first], inverse.reshape(-1)


def _with_text(p: Provenance, tokenizer: Any, ids: list[int]) -> Provenance:
    m = p.longest_match
    if m.tokens == 0:
        return p
    text = tokenizer.decode(ids[m.start : m.start + m.tokens], skip_special_tokens=False)
    return Provenance(p.n, p.ngrams, p.found, p.only, p.novel, LongestMatch(**{**m.__dict__, "text": text}))


def locate_shards(path: Path) -> tuple[Path, Path | None]:
    """(shards folder, the run's config.yaml or None) for a study run folder or a shards folder."""
    if (path / "manifest.json").is_file():
        return path, None
    if (path / "shards" / "manifest.json").is_file():
        config = path / "config.yaml"
        return path / "shards", config if config.is_file() else None
    if not path.is_dir():
        raise UserError(f"run or shards folder not found: {path}")
    raise UserError(
        f"{path} is neither a study run (no shards/manifest.json) nor a shards folder (no manifest.json)"
    )


@dataclass(frozen=True)
class ProvenanceSummary:
    """A batch's provenance pooled over its n-grams (a long generation weighs more than a short one),
    as an RL metrics line or an eval result carries it."""

    n: int
    generations: int
    ngrams: int
    found: dict[str, int]
    only: dict[str, int]
    novel: int
    longest_match_mean: float | None  # tokens, over generations
    longest_match_max: int

    def _share(self, count: int) -> float | None:
        return count / self.ngrams if self.ngrams else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "generations": self.generations,
            "ngrams": self.ngrams,
            "source_share": {s: self._share(c) for s, c in self.found.items()},
            "unique_share": {s: self._share(c) for s, c in self.only.items()},
            "novelty": self._share(self.novel),
            "longest_match_mean": self.longest_match_mean,
            "longest_match_max": self.longest_match_max,
        }


def summarise(
    traced: Sequence[Provenance], sources: Sequence[str] = (), n: int = DEFAULT_N
) -> ProvenanceSummary:
    """Pool a batch: shares of all its n-grams together, longest matches averaged over generations.
    `sources` and `n` name an empty batch's (shares None, never 0)."""
    names = list(traced[0].found) if traced else list(sources)
    longest = [p.longest_match.tokens for p in traced]
    return ProvenanceSummary(
        n=traced[0].n if traced else n,
        generations=len(traced),
        ngrams=sum(p.ngrams for p in traced),
        found={s: sum(p.found[s] for p in traced) for s in names},
        only={s: sum(p.only[s] for p in traced) for s in names},
        novel=sum(p.novel for p in traced),
        longest_match_mean=sum(longest) / len(longest) if longest else None,
        longest_match_max=max(longest, default=0),
    )
