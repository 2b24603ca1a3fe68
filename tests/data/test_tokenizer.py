"""The tokenizer: BPE training, HF folder round trip, and the prompt-prefix property of documents."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from echochamber.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    PROMPT_SEPARATOR,
    DocumentEncoder,
    TokenizerConfig,
    check_round_trip,
    encode_document,
    encode_documents,
    encode_prompt,
    encode_to_file,
    load_tokenizer,
    pad_token_id,
    tokenizer_hash,
    train_bpe,
)
from echochamber.data.world import WorldConfig, generate_world
from echochamber.errors import UserError
from echochamber.formats.render import solution_text

QUESTIONS = [
    "Tom has 12 apples and buys 7 more. How many apples does he have?",
    "A box holds 24 pens. How many pens are in 3 boxes?",
    "Mia reads 15 pages a day for 4 days. How many pages does she read?",
]
SOLUTIONS = [
    "def simple_math_problem() -> int:\n    apples = 12\n    bought = 7\n    result = apples + bought\n    return result",
    "Let's solve this problem using Python code.\n<llm-code>\n24 * 3\n</llm-code>\n<llm-code-output>\n72\n</llm-code-output>\nThere are \\boxed{72} pens.",
    "Mia reads $15 \\times 4 = 60$ pages.\nSo she reads \\boxed{60} pages.",
]
# Solutions whose first characters BPE would otherwise fuse with, or cut differently after, "\n\n".
AWKWARD_SOLUTIONS = ["3 + 4 = 7", "\nanswer 7", " leading space", "\n\n\nthree newlines", "x"]


def corpus() -> list[str]:
    texts = []
    for _ in range(20):
        texts += [q + PROMPT_SEPARATOR for q in QUESTIONS] + SOLUTIONS + AWKWARD_SOLUTIONS
    return texts


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return train_bpe(corpus(), vocab_size=400, min_frequency=1)


def test_bpe_splits_digits_and_has_eos_and_pad(bpe: PreTrainedTokenizerFast) -> None:
    assert len(bpe) == 400
    assert bpe.convert_ids_to_tokens([bpe.eos_token_id, bpe.pad_token_id]) == [EOS_TOKEN, PAD_TOKEN]
    assert bpe.eos_token_id != bpe.pad_token_id
    pieces = [
        bpe.decode([i]) for i in bpe("In 2024, 1234 + 56 = 1290", add_special_tokens=False)["input_ids"]
    ]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("20241234561290")  # every digit alone, none merged with anything
    # No learned merge contains a digit next to anything else.
    for token in bpe.get_vocab():
        text = bpe.convert_tokens_to_string([token])
        assert len(text) == 1 or not any(c.isdigit() for c in text), token


def test_saved_folder_loads_with_auto_tokenizer(bpe: PreTrainedTokenizerFast, tmp_path) -> None:
    bpe.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (
        bpe.eos_token_id,
        bpe.pad_token_id,
        len(bpe),
    )
    for q, s in zip(QUESTIONS, SOLUTIONS, strict=True):
        assert encode_document(loaded, q, s) == encode_document(bpe, q, s)
    assert load_tokenizer(tmp_path).eos_token_id == bpe.eos_token_id


def test_training_is_deterministic(tmp_path) -> None:
    for name in ("a", "b"):
        train_bpe(corpus(), vocab_size=400, min_frequency=1).save_pretrained(str(tmp_path / name))
    assert tokenizer_hash(tmp_path / "a") == tokenizer_hash(tmp_path / "b")
    other = train_bpe(corpus(), vocab_size=350, min_frequency=1)
    other.save_pretrained(str(tmp_path / "c"))
    assert tokenizer_hash(tmp_path / "c") != tokenizer_hash(tmp_path / "a")


def assert_prompt_is_prefix_and_text_round_trips(tokenizer, prompt: str, solution: str) -> None:
    prompt_ids = encode_prompt(tokenizer, prompt)
    doc = encode_document(tokenizer, prompt, solution)
    assert doc[: len(prompt_ids)] == prompt_ids
    assert doc[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in doc[:-1]
    assert tokenizer.decode(doc[:-1]) == prompt + PROMPT_SEPARATOR + solution


def test_prompt_is_a_token_prefix_of_its_document(bpe: PreTrainedTokenizerFast) -> None:
    cases = [(q, s) for q in QUESTIONS for s in SOLUTIONS + AWKWARD_SOLUTIONS]
    naive_mismatches = 0
    for q, s in cases:
        assert_prompt_is_prefix_and_text_round_trips(bpe, q, s)
        whole = bpe(q + PROMPT_SEPARATOR + s, add_special_tokens=False)["input_ids"]
        naive_mismatches += whole[: len(encode_prompt(bpe, q))] != encode_prompt(bpe, q)
    # The property is not free: encoding the document as one string breaks it for these cases.
    assert naive_mismatches > 0
    batched = encode_documents(bpe, [q for q, _ in cases], [s for _, s in cases])
    assert batched == [encode_document(bpe, q, s) for q, s in cases]


# Texts where a cut in the wrong place changes the ids: whitespace runs before words and digits
# (GPT-2's pattern splits "\n    x" as "\n   " + " x"), digits glued to letters, apostrophes,
# non-ASCII letters, numerals other than 0-9, and the EOS text itself inside a document.
TRICKY_TEXTS = [
    "    apples = 12\n    result = apples * 3\n    return result",
    "a  b   c\t d \n\n e 7  8 9x9 x9 9 x",
    "It's 3's and 12'll 'd 5 'm   7 ' 8 '",
    "café 4 naïve  5 日本 6 é é  x \u00a0 y",
    "٣ apples, ² squares, ½ cake, Ⅻ o'clock, １２ fullwidth",
    f"before {EOS_TOKEN} after 3{EOS_TOKEN}4 {EOS_TOKEN}",
    "12345",
    "  ",
    "",
]


def encode_by_pieces(tokenizer, cut: str, prompts: list[str], solutions: list[str]) -> list[list[int]]:
    """The encoder's scheme with another cut rule: each piece encoded alone, then concatenated."""
    docs = []
    for p, s in zip(prompts, solutions, strict=True):
        parts = ([p + PROMPT_SEPARATOR] if p else []) + [s]
        pieces = [x for part in parts for x in re.split(cut, part)]
        docs.append([i for x in pieces for i in tokenizer(x, add_special_tokens=False)["input_ids"]])
        docs[-1].append(tokenizer.eos_token_id)
    return docs


def split_flat(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [doc.tolist() for doc in np.split(ids, np.cumsum(lengths)[:-1])] if len(lengths) else []


def test_document_encoder_gives_the_ids_of_encode_documents(bpe: PreTrainedTokenizerFast) -> None:
    texts = TRICKY_TEXTS + SOLUTIONS + AWKWARD_SOLUTIONS
    prompts = [q for q in QUESTIONS + TRICKY_TEXTS for _ in texts]
    solutions = texts * len(QUESTIONS + TRICKY_TEXTS)
    expected = encode_documents(bpe, prompts, solutions)
    encoder = DocumentEncoder(bpe)
    assert encoder.memoises
    ids, lengths = encoder.encode(prompts, solutions)
    assert ids.dtype == np.int64 and split_flat(ids, lengths) == expected
    # Again, from a warm cache and in other batch sizes: only speed may change.
    halves = [encoder.encode(prompts[:7], solutions[:7]), encoder.encode(prompts[7:], solutions[7:])]
    assert [d for ids, lengths in halves for d in split_flat(ids, lengths)] == expected
    assert split_flat(*encoder.encode([], [])) == []
    # The check has teeth: cutting before every space, or after every newline, changes ids here.
    for wrong_cut in (r"(?= )", r"(?<=\n)"):
        assert encode_by_pieces(bpe, wrong_cut, prompts, solutions) != expected, wrong_cut


def test_document_encoder_on_world_text() -> None:
    problems = generate_world(WorldConfig(n_pretrain=200, n_rl=5, n_test=5, n_hard=5, seed=1))["pretrain"]
    prompts = [p.question for p in problems] * 3
    solutions = [solution_text(p, style) for style in ("tinygsm", "omi1", "omi2") for p in problems]
    tokenizer = train_bpe([q + PROMPT_SEPARATOR for q in prompts] + solutions, vocab_size=600)
    encoder = DocumentEncoder(tokenizer)
    ids, lengths = encoder.encode(prompts, solutions)
    assert split_flat(ids, lengths) == encode_documents(tokenizer, prompts, solutions)


def test_document_encoder_uses_its_cut_only_where_it_is_exact(bpe, tmp_path) -> None:
    bpe.save_pretrained(str(tmp_path))
    assert DocumentEncoder(load_tokenizer(tmp_path)).memoises  # the saved folder is the same pipeline
    prompts, solutions = QUESTIONS, SOLUTIONS
    for other in (sentencepiece_like(), sentencepiece_like(normalizers.Lowercase())):
        encoder = DocumentEncoder(other)
        assert not encoder.memoises
        assert split_flat(*encoder.encode(prompts, solutions)) == encode_documents(other, prompts, solutions)


def test_encode_to_file_writes_the_documents_flat(bpe: PreTrainedTokenizerFast, tmp_path) -> None:
    batches = [(QUESTIONS, SOLUTIONS), (["", QUESTIONS[0]], AWKWARD_SOLUTIONS[:2])]
    lengths = encode_to_file(DocumentEncoder(bpe), iter(batches), np.dtype(np.uint16), tmp_path / "t.bin")
    stream = np.fromfile(tmp_path / "t.bin", dtype=np.uint16)
    expected = [d for prompts, solutions in batches for d in encode_documents(bpe, prompts, solutions)]
    assert split_flat(stream, lengths) == expected


def test_plain_text_document_has_no_separator(bpe: PreTrainedTokenizerFast) -> None:
    doc = encode_document(bpe, "", SOLUTIONS[2])
    assert bpe.decode(doc[:-1]) == SOLUTIONS[2]


def sentencepiece_like(normalizer=None) -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: Metaspace marker prepended to the start of each input."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    alphabet = sorted(set("".join(corpus())) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def test_sentencepiece_style_solution_is_encoded_as_a_continuation() -> None:
    tokenizer = sentencepiece_like()
    q, s = QUESTIONS[0], SOLUTIONS[0]
    # Encoded alone, the solution gains a word-boundary marker: "\n\n def ..." after the prompt.
    alone = tokenizer(s, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(encode_prompt(tokenizer, q) + alone) != q + PROMPT_SEPARATOR + s
    for q, s in zip(QUESTIONS, SOLUTIONS, strict=True):
        assert_prompt_is_prefix_and_text_round_trips(tokenizer, q, s)
        check_round_trip(tokenizer, q, s)
    assert pad_token_id(tokenizer) == tokenizer.eos_token_id  # no pad token -> EOS pads
    # A plain-text document (no prompt) that starts with spaces: encoded as a continuation, so the
    # decoder's strip of one leading space at the start of an input must not be held against it.
    check_round_trip(tokenizer, "", "  indented code\n  x = 1")


def test_round_trip_check_rejects_a_normalising_tokenizer() -> None:
    tokenizer = sentencepiece_like(normalizers.Lowercase())
    with pytest.raises(UserError, match="round-trip"):
        check_round_trip(tokenizer, QUESTIONS[0], SOLUTIONS[0])


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="cannot load"):
        load_tokenizer(tmp_path)  # an empty folder
    no_eos = PreTrainedTokenizerFast(tokenizer_object=sentencepiece_like().backend_tokenizer)
    no_eos.save_pretrained(str(tmp_path / "no_eos"))
    with pytest.raises(UserError, match="no EOS"):
        load_tokenizer(tmp_path / "no_eos")


def test_a_hub_id_is_tried_on_the_hub_only_where_a_mixture_allows_it(tmp_path, monkeypatch) -> None:
    """A mixture's `tokenizer.path: meta-llama/Llama-2-7b-hf` is fetched from the hub (or its cache);
    a checkpoint's tokenizer folder never is. (The hub call is stood in for: there is no network.)"""
    import transformers

    calls = []

    def offline(name, local_files_only):
        calls.append((name, local_files_only))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(UserError, match="the hub id meta-llama/Llama-2-7b-hf .*without a network, download it"):
        load_tokenizer("meta-llama/Llama-2-7b-hf", hub=True)
    assert calls == [("meta-llama/Llama-2-7b-hf", False)]
    with pytest.raises(UserError, match="tokenizer folder not found"):
        load_tokenizer("meta-llama/Llama-2-7b-hf")
    with pytest.raises(UserError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "a" / "b" / "c", hub=True)  # not an owner/name id
    assert len(calls) == 1


def test_config_rejects_tiny_vocabulary() -> None:
    with pytest.raises(UserError, match="vocab_size"):
        TokenizerConfig(vocab_size=100).validate()
    TokenizerConfig(vocab_size=100, path="some/folder").validate()  # ignored when a folder is given
