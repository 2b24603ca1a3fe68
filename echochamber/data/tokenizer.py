"""Tokenizers: train a byte-level BPE on a mixture, or load any Hugging Face tokenizer folder.

Also the one place that turns text into token ids for the whole project. A pretraining document is
`prompt + "\\n\\n" + solution + EOS` (as in the paper), and the sampler later gives the model
`prompt + "\\n\\n"`. Encoding the document as one string lets BPE merge across that boundary
(`"\\n\\n"` fused with what follows, or split differently), so the prompt the model sees at sampling
time would not be a token prefix of anything it was trained on — a prototype saw one format's share
jump to 75 % from that alone. So the prompt part and the solution part are encoded separately and
concatenated: `encode_prompt(p)` is, by construction, a prefix of `encode_document(p, s)`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from echochamber.errors import UserError

PROMPT_SEPARATOR = "\n\n"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# 256 byte symbols + the special tokens: a smaller vocabulary could not represent every input.
MIN_VOCAB_SIZE = 256 + 2


@dataclass
class TokenizerConfig:
    """Which tokenizer a mixture uses: a BPE trained on its documents, or an existing HF folder."""

    vocab_size: int = 1024  # BPE vocabulary size (special tokens included); ignored when `path` is set
    path: str | None = None  # a local HF tokenizer folder (e.g. Llama-2's, as in the paper)
    min_frequency: int = 2  # a pair must occur this often to be merged
    # BPE training reads a seeded sample of this many training documents (None: all of them); merges
    # settle long before millions of documents, and training time grows with the text.
    train_docs: int | None = 10000

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
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """An HF tokenizer from a local folder; it must define an EOS token (documents end with it)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer folder not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {path}: {first_line}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer in {path} has no EOS token; documents must end with one")
    return tokenizer


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id, falling back to EOS for tokenizers without one (Llama-2 has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The ids the sampler gives the model for a question: `prompt + "\\n\\n"`, no BOS, no template."""
    return tokenizer(prompt + PROMPT_SEPARATOR, add_special_tokens=False)["input_ids"]


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


def check_round_trip(tokenizer: PreTrainedTokenizerBase, prompt: str, solution: str) -> None:
    """Fail if the tokenizer cannot reproduce a document's text (e.g. one that lowercases or
    normalises Unicode): the model would then learn, and be prompted with, different text."""
    text = prompt + PROMPT_SEPARATOR + solution if prompt else solution
    ids = encode_document(tokenizer, prompt, solution)[:-1]
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded != text:
        diff = len(os.path.commonprefix([decoded, text]))
        raise UserError(
            f"tokenizer does not round-trip document text (first difference at character {diff}: "
            f"{text[diff : diff + 20]!r} came back as {decoded[diff : diff + 20]!r})"
        )


def tokenizer_hash(folder: Path) -> str:
    """A short hash of a saved tokenizer folder (every file's name and bytes, in name order)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
