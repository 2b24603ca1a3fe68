"""Tokenizers: train a byte-level BPE on a mixture, or load any Hugging Face tokenizer folder.

Also the one place that turns text into token ids for the whole project. A pretraining document is
`prompt + "\\n\\n" + solution + EOS` (as in the paper), and the sampler later gives the model
`prompt + "\\n\\n"`. Encoding the document as one string lets BPE merge across that boundary
(`"\\n\\n"` fused with what follows, or split differently), so the prompt the model sees at sampling
time would not be a token prefix of anything it was trained on — a prototype saw one format's share
jump to 75 % from that alone. So the prompt part and the solution part are encoded separately and
concatenated: `encode_prompt(p)` is, by construction, a prefix of `encode_document(p, s)`.

`DocumentEncoder` gives the same ids as `encode_documents` many times faster for the BPE trained
here (see its docstring): building shards spends its time there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from echochamber.errors import UserError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PROMPT_SEPARATOR = "\n\n"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# 256 byte symbols + the special tokens: a smaller vocabulary could not represent every input.
MIN_VOCAB_SIZE = 256 + 2


@dataclass
class TokenizerConfig:
    """Which tokenizer a mixture uses: a BPE trained on its documents, or an existing HF folder."""

    vocab_size: int = 1024  # BPE vocabulary size (special tokens included); ignored when `path` is set
    path: str | None = None  # an HF tokenizer folder, or a hub id (meta-llama/Llama-2-7b-hf, as in the paper)
    min_frequency: int = 2  # a pair must occur this often to be merged
    # BPE training reads a seeded sample of this many training documents (None: all of them). Training
    # time grows with the text (~0.2 s per 1000 world documents) while merges settle early: on the
    # default world, 2000 documents give 0.14 % more tokens than 10000.
    train_docs: int | None = 2000

    def validate(self) -> None:
        if self.path is None and self.vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"tokenizer.vocab_size must be at least {MIN_VOCAB_SIZE}, got {self.vocab_size}")
        if self.train_docs is not None and self.train_docs < 1:
            raise UserError(f"tokenizer.train_docs must be >= 1, got {self.train_docs}")
        if self.min_frequency < 1:
            raise UserError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE with every digit its own token (numbers stay compositional) plus EOS and pad.

    Feed it the same pieces `encode_documents` encodes (prompts with their separator, solutions
    alone), so merges are learned on the text the way it will be cut. Deterministic for a given
    text order.
    """
    backend = _bpe_pipeline()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    # Here, not at the top: transformers takes ~1 s to import on a 2-core Zen 3 (AutoTokenizer pulls in torch too), and
    # the config modules that import this one must load without it, so a config error is instant.
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def _bpe_pipeline() -> Tokenizer:
    """`train_bpe`'s untrained tokenizer; `DocumentEncoder`'s cut points are exact for this pipeline."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def load_tokenizer(path: str | Path, *, hub: bool = False) -> PreTrainedTokenizerBase:
    """An HF tokenizer from a local folder; it must define an EOS token (documents end with it).

    With `hub`, a `path` that is no folder but looks like a hub id (owner/name, as a mixture's
    `tokenizer.path: meta-llama/Llama-2-7b-hf`) is loaded from the hub or its local cache."""
    from transformers import AutoTokenizer

    from_hub = hub and not Path(path).exists() and _HUB_ID.fullmatch(str(path)) is not None
    if not from_hub and not Path(path).is_dir():
        raise UserError(f"tokenizer folder not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=not from_hub)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the hub id {path} (no local folder of that name; without a network, download it and give its folder)" if from_hub else path
        raise UserError(f"cannot load a tokenizer from {where}: {first_line}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer in {path} has no EOS token; documents must end with one")
    return tokenizer


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id, falling back to EOS for tokenizers without one (Llama-2 has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The ids the sampler gives the model for a question: `prompt + "\\n\\n"`, no BOS, no template."""
    return tokenizer(prompt + PROMPT_SEPARATOR, add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """`encode_prompt` of many questions in one batched tokenizer call (the same ids)."""
    if not prompts:
        return []
    return tokenizer([p + PROMPT_SEPARATOR for p in prompts], add_special_tokens=False)["input_ids"]


def encode_document(tokenizer: PreTrainedTokenizerBase, prompt: str, solution: str) -> list[int]:
    """The ids of one pretraining document; `encode_prompt(tokenizer, prompt)` is a prefix of it."""
    return encode_documents(tokenizer, [prompt], [solution])[0]


def encode_documents(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], solutions: list[str]
) -> list[list[int]]:
    """Batched `encode_document` (one Rust batch call per part). An empty prompt makes a plain-text
    document (`solution + EOS`, no separator), for pretraining-only text sources."""
    prompt_texts = [p + PROMPT_SEPARATOR if p else "" for p in prompts]
    prompt_ids = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    solution_ids = _encode_after_boundary(tokenizer, solutions)
    eos = tokenizer.eos_token_id
    return [p + s + [eos] for p, s in zip(prompt_ids, solution_ids, strict=True)]


def _encode_after_boundary(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Encode texts as continuations, not as the start of an input.

    SentencePiece-style tokenizers (Llama-2) prepend a word-boundary marker to the start of every
    input, so a solution encoded alone would decode as `"\\n\\n def ..."`. Encoding it right after
    the EOS special token (split off before pre-tokenization, so nothing merges across it) gives
    the continuation form; the EOS id is then dropped.
    """
    eos_id, eos_text = tokenizer.eos_token_id, tokenizer.eos_token
    encoded = tokenizer([eos_text + t for t in texts], add_special_tokens=False)["input_ids"]
    for ids in encoded:
        if not ids or ids[0] != eos_id:
            raise UserError(f"tokenizer does not encode its EOS text {eos_text!r} as the single id {eos_id}")
    return [ids[1:] for ids in encoded]


# Places where, for the `train_bpe` pipeline, the text on either side encodes alone exactly as it does in
# place. Around each ASCII digit: the Digits pre-tokenizer isolates every digit before anything else
# runs. Before a space that follows a visible ASCII character: no pre-token of the GPT-2 pattern holds
# such a pair (a space only ever starts one), and the pattern never looks behind, so the pre-tokens on
# each side are the same alone as in place. BPE then merges inside pre-tokens only.
_PIECES = re.compile(r"[0-9]+|[^0-9]+")
_WORD_STARTS = re.compile(r"(?<=[!-~])(?= )")
# Pieces (and words) remembered per encoder before it starts afresh: bounds memory on real corpora.
_MAX_CACHED = 1 << 20


class DocumentEncoder:
    """`encode_documents`, batch after batch, fast: same ids, returned as flat numpy arrays.

    Math text repeats its wording around changing numbers, and the slow part of a Hugging Face
    tokenizer is its per-character pre-tokenization. For the BPE `train_bpe` makes, each text is cut
    into pieces between digits, each new piece into words at spaces, and only new words go through
    the tokenizer; a piece seen before costs one dictionary lookup. Cutting there is exact (see
    `_PIECES`), and tests compare every id with `encode_documents`. Any other tokenizer (a
    SentencePiece one may treat the start of text specially) is encoded whole by `encode_documents`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.memoises = _has_bpe_pipeline(tokenizer)
        self._reset()

    def _reset(self) -> None:
        # Piece text -> its row in the ids table; None stands for the EOS that ends every document.
        self._piece_index: dict[str | None, int] = {None: 0}
        self._table = np.array([self.tokenizer.eos_token_id], dtype=np.int64)  # all pieces' ids, concatenated
        self._starts = np.zeros(1, dtype=np.int64)
        self._lengths = np.ones(1, dtype=np.int64)
        self._word_ids: dict[str, list[int]] = {}

    def encode(self, prompts: list[str], solutions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The documents' ids, concatenated in order (int64), and each document's length."""
        if not self.memoises:
            docs = encode_documents(self.tokenizer, prompts, solutions)
            lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
            return np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum())), lengths
        if len(self._piece_index) > _MAX_CACHED or len(self._word_ids) > _MAX_CACHED:
            self._reset()
        cut = _PIECES.findall
        # The prompt part and the solution part are cut apart, as encode_documents encodes them apart.
        pieces = [
            (cut(p + PROMPT_SEPARATOR) if p else []) + cut(s) + [None]
            for p, s in zip(prompts, solutions, strict=True)
        ]
        index = self._piece_index
        known = len(index)
        order = np.array([index.setdefault(x, len(index)) for doc in pieces for x in doc], dtype=np.int64)
        if len(index) > known:
            self._learn(list(index)[known:])
        # Gather: token k of the batch is token (k - start of its piece in the batch) of its piece.
        lengths = self._lengths[order]
        shift = np.repeat(self._starts[order] - (np.cumsum(lengths) - lengths), lengths)
        ids = self._table[shift + np.arange(int(lengths.sum()))]
        first_piece = np.cumsum([0] + [len(doc) for doc in pieces[:-1]])
        return ids, np.add.reduceat(lengths, first_piece) if pieces else np.zeros(0, dtype=np.int64)

    def _learn(self, new_pieces: list[str]) -> None:
        """Encode pieces seen for the first time, word by word, and add them to the table."""
        words = [_WORD_STARTS.split(piece) for piece in new_pieces]
        unseen = list(dict.fromkeys(w for piece in words for w in piece if w not in self._word_ids))
        if unseen:
            encoded = self.tokenizer(unseen, add_special_tokens=False)["input_ids"]
            self._word_ids.update(zip(unseen, encoded, strict=True))
        word_ids = self._word_ids
        new_ids = [list(chain.from_iterable(map(word_ids.__getitem__, ws))) for ws in words]
        new_lengths = np.fromiter(map(len, new_ids), dtype=np.int64, count=len(new_ids))
        self._starts = np.concatenate([self._starts, len(self._table) + np.cumsum(new_lengths) - new_lengths])
        self._lengths = np.concatenate([self._lengths, new_lengths])
        flat = np.fromiter(chain.from_iterable(new_ids), dtype=np.int64, count=int(new_lengths.sum()))
        self._table = np.concatenate([self._table, flat])


def encode_to_file(
    encoder: DocumentEncoder, batches: Iterable[tuple[list[str], list[str]]], dtype: np.dtype, path: Path
) -> np.ndarray:
    """Encode (prompts, solutions) batches in this process into one flat token file of `dtype`;
    return every document's length. The encoder's cache serves all batches."""
    lengths = []
    with path.open("wb") as out:
        for prompts, solutions in batches:
            ids, doc_lengths = encoder.encode(prompts, solutions)
            out.write(ids.astype(dtype).tobytes())
            lengths.append(doc_lengths)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def encode_to_file_in_workers(
    encoder: DocumentEncoder,
    documents: datasets.Dataset,
    dtype: np.dtype,
    workers: int,
    path: Path,
    batch_size: int,
) -> np.ndarray:
    """`encode_to_file` for millions of documents (columns prompt, solution): `datasets`' map on
    `workers` processes, each with its own copy of the encoder and cache, into Arrow files in a
    `<path>.cache` folder (removed after), then copied into the flat file a record batch at a time."""
    import datasets

    cache_dir = path.with_name(path.name + ".cache")
    cache_dir.mkdir()
    # Forked workers each run their own tokenizer; saying so up front keeps the Rust thread pool
    # (already used by BPE training) from warning about, and risking, a fork after parallel use.
    with _environment("TOKENIZERS_PARALLELISM", "false"):
        encoded = documents.with_format("arrow").map(
            _encode_arrow_batch,
            fn_kwargs={"encoder": encoder, "dtype": dtype.name},
            batched=True,
            batch_size=batch_size,
            remove_columns=["prompt", "solution"],
            features=datasets.Features({"ids": datasets.List(datasets.Value(dtype.name))}),
            num_proc=workers,
            cache_file_name=str(cache_dir / "documents.arrow"),
            new_fingerprint=hashlib.sha256(path.as_posix().encode()).hexdigest()[:16],
            desc="tokenizing",
        )
    chunks = encoded.data.column("ids").chunks
    lengths = np.concatenate([np.diff(c.offsets.to_numpy()) for c in chunks]).astype(np.int64)
    with path.open("wb") as out:
        for chunk in chunks:  # Arrow record batches (thousands of documents each), not documents
            out.write(chunk.flatten().to_numpy().tobytes())
    del encoded, chunks
    shutil.rmtree(cache_dir)
    return lengths


def _encode_arrow_batch(batch: pa.Table, encoder: DocumentEncoder, dtype: str) -> pa.Table:
    import pyarrow as pa

    ids, lengths = encoder.encode(batch.column("prompt").to_pylist(), batch.column("solution").to_pylist())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.table({"ids": pa.ListArray.from_arrays(offsets, ids.astype(dtype))})


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for a block, then restore it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def _has_bpe_pipeline(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer is `train_bpe`'s pipeline, for which `DocumentEncoder`'s cuts are exact:
    no normaliser, the same pre-tokenizers, deterministic BPE, and added tokens (matched before
    anything else) that no cut can split and that do not look at their neighbours."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return False
    spec = json.loads(backend.to_str())
    return (
        spec["normalizer"] is None
        and spec["pre_tokenizer"] == json.loads(_bpe_pipeline().to_str())["pre_tokenizer"]
        and spec["model"]["type"] == "BPE"
        and spec["model"]["dropout"] is None
        and all(
            not re.search(r"[\s0-9]", t["content"]) and not (t["single_word"] or t["lstrip"] or t["rstrip"])
            for t in spec["added_tokens"]
        )
    )


def check_round_trip(tokenizer: PreTrainedTokenizerBase, prompt: str, solution: str) -> None:
    """Fail if the tokenizer cannot reproduce a document's text (e.g. one that lowercases or
    normalises Unicode): the model would then learn, and be prompted with, different text."""
    text = prompt + PROMPT_SEPARATOR + solution if prompt else solution
    ids = encode_document(tokenizer, prompt, solution)[:-1]
    start = len(encode_prompt(tokenizer, prompt)) if prompt else 0
    # Each part decoded as it was encoded: the prompt as the start of an input, the solution as a
    # continuation (a SentencePiece decoder strips one leading space from the start of an input, so
    # a plain-text document beginning with spaces would otherwise seem to lose one).
    decoded = _decode(tokenizer, ids[:start]) + _decode_continuation(tokenizer, ids[start:])
    if decoded != text:
        diff = len(os.path.commonprefix([decoded, text]))
        raise UserError(
            f"tokenizer does not round-trip document text (first difference at character {diff}: "
            f"{text[diff : diff + 20]!r} came back as {decoded[diff : diff + 20]!r})"
        )


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) if ids else ""


def _decode_continuation(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Text of ids that continue an input (`_encode_after_boundary`'s inverse): decoded after the EOS."""
    eos = tokenizer.eos_token
    return _decode(tokenizer, [tokenizer.eos_token_id, *ids]).removeprefix(eos) if ids else ""


def tokenizer_hash(folder: Path) -> str:
    """A short hash of a saved tokenizer folder (every file's name and bytes, in name order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
