"""What the format rules are built from: the structure of a completion, and the paper's own rule.

The format registry (registry.py, rules.py) labels completions; this module holds the text
primitives its rules use, each written once and tuned on real data, because format shares are the
study's headline measurement and must not be fooled:
- `find_function`: a TinyGSM completion opens with a `def` that parses and returns a value (by
  structure, not the substring "def": a question about "defective" parts is not code, nor is an OMI2
  solution that shows a helper function in passing). Text after the function is tolerated: small
  models often run on into a new problem instead of stopping.
- `is_degenerate`: boxed spam, a repeating tail, text that compresses like a loop. Such text is
  `other` whatever format it resembles, so a policy collapsing into garbage does not look like
  convergence onto a format.
- `boxed_spans` / `closing_brace`: `\\boxed{...}` answers with nested braces.
- `first_block`: the first complete `<llm-code>`-style block.

`paper_format` is the paper's unrepaired rule (first `<llm-code>` -> OMI1, the substring "def" ->
TinyGSM, otherwise text), recorded beside ours so our shares can be held against its figures.
"""

from __future__ import annotations

import ast
import re
import textwrap
import zlib

# More boxed answers than this is spam: MATH-500 and OMI-2 reference solutions carry at most 2.
MAX_BOXED = 4
# A tail that repeats with a period up to MAX_PERIOD chars, over at least MIN_REPEAT_CHARS chars
# and at least three periods, is a generation loop (exact loops are what greedy decoding produces).
MAX_PERIOD = 200
MIN_REPEAT_CHARS = 150
# zlib ratios of real solutions stay under 5 (MATH-500 max 4.98, OMI-2 max 3.7, GSM8K max 2.7);
# a loop over most of a long text compresses far better.
MAX_COMPRESSION_RATIO = 6.0
MIN_COMPRESSION_CHARS = 400
# Bounds the work on pathological inputs: parse attempts while looking for the function's end.
MAX_FUNCTION_PARSES = 64

_DEF_LINE = re.compile(r"^def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)
# What may precede the opening `def` of a TinyGSM completion.
_PRELUDE = ("import ", "from ", "#", "```")
_BOXED = "\\boxed{"
_TAIL_KEY = 16  # chars of the tail looked up to find candidate loop periods


def paper_format(completion: str) -> str:
    """The Echo Chamber paper's own rule, exactly: `<llm-code>` anywhere -> omi1, else the substring
    "def" anywhere -> tinygsm, else omi2 (text). One of PAPER_FORMATS.

    It differs from the built-in formats where the repairs above apply: prose about "defective"
    parts or an OMI2 solution showing a helper function is tinygsm here, and degenerate text is omi2
    (or tinygsm if it contains "def") here but `other` in ours.
    """
    if "<llm-code>" in completion:
        return "omi1"
    if "def" in completion:
        return "tinygsm"
    return "omi2"


def first_block(text: str, opening: str, closing: str) -> str | None | bool:
    """The dedented body of the first `opening ... closing` block; False when `opening` occurs but
    no `closing` follows it (an unterminated block: attempted code that cannot be run); None when
    `opening` does not occur. A later opening cannot have a closing the first one lacks."""
    start = text.find(opening)
    if start == -1:
        return None
    end = text.find(closing, start + len(opening))
    if end == -1:
        return False
    return textwrap.dedent(text[start + len(opening) : end]).strip("\n")


def is_degenerate(text: str) -> bool:
    """True for generation loops: boxed spam, a repeating tail, or text that compresses like one."""
    if text.count(_BOXED) > MAX_BOXED:
        return True
    if _has_repeating_tail(text):
        return True
    if len(text) >= MIN_COMPRESSION_CHARS:
        raw = text.encode("utf-8", errors="replace")
        if len(raw) / len(zlib.compress(raw)) >= MAX_COMPRESSION_RATIO:
            return True
    return False


def _has_repeating_tail(text: str) -> bool:
    stripped = text.rstrip()
    # Trailing whitespace alone is a loop too (a model printing newlines to the limit).
    if len(text) - len(stripped) >= MIN_REPEAT_CHARS:
        return True
    if len(stripped) < MIN_REPEAT_CHARS:
        return False
    # A loop of period p repeats the text's last KEY chars p chars earlier, so only the places
    # where they recur (found by str.rfind, from the nearest) can be periods: cheap on every rollout.
    size, key = len(stripped), stripped[-_TAIL_KEY:]
    search_end = size - 1
    while (start := stripped.rfind(key, max(0, size - _TAIL_KEY - MAX_PERIOD), search_end)) != -1:
        period = size - _TAIL_KEY - start
        span = max(3 * period, MIN_REPEAT_CHARS)
        if span > size:
            return False
        if stripped[size - span + period :] == stripped[size - span : size - period]:
            return True
        search_end = start + _TAIL_KEY - 1
    return False


def find_function(text: str) -> tuple[str, str] | str | None:
    """The function a TinyGSM completion opens with: (source, name) if it parses and returns a
    value, else a one-line reason it is unusable; None when the completion does not open with a
    `def` (only blank lines, imports, comments or a code fence may come first: a `def` inside a
    prose solution is an OMI2 aside, not the TinyGSM format)."""
    match = _DEF_LINE.search(text)
    if match is None:
        return None
    start = match.start()
    prefix = text[:start].splitlines()
    if not all(line.strip() == "" or line.lstrip().startswith(_PRELUDE) for line in prefix):
        return None
    imports = "".join(line + "\n" for line in prefix if line.startswith(("import ", "from ")))
    body = text[start:]
    # The function ends before the first later line that starts in column 0 at which the source
    # parses; trying each such line (and the end) tolerates trailing prose, a new problem, etc.
    ends = [m.start() for m in re.finditer(r"\n(?=\S)", body)] + [len(body)]
    for end in ends[:MAX_FUNCTION_PARSES]:
        try:
            tree = ast.parse(body[:end])
        except (SyntaxError, ValueError, RecursionError):
            continue
        function = tree.body[0]
        if not isinstance(function, ast.FunctionDef):
            return "first def is not a function definition"
        if not any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(function)):
            return f"function {function.name} never returns a value"
        return imports + body[:end], function.name
    return f"function {match.group(1)} does not parse (truncated or not Python)"


def closing_brace(text: str, start: int) -> int | None:
    """The index of the `}` that closes the `{` at `text[start]` (nested braces counted), or None
    when it never closes. The one brace matcher for `\\boxed{...}`: the classifier's spans here and
    the gold answers of the dataset adapters (data.adapters.last_boxed)."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every `\\boxed{...}` whose braces close."""
    spans = []
    position = text.find(_BOXED)
    while position != -1:
        end = closing_brace(text, position + len(_BOXED) - 1)
        if end is not None:
            spans.append((position, end + 1))
        position = text.find(_BOXED, position + len(_BOXED))
    return spans
