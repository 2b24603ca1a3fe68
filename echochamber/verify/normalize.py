"""How an answer is spelled before it is compared: the light half of answer checking.

Gold answers, extracted answers and program values are brought to one spelling here (pure string
work, no math-verify and no worker processes), so that the grader, the eval suite's vote keys and
the report, which must not start the math-verify pool (verify/answers.py), share one rule.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# Thousands separators, also LaTeX's `1,\!000` and `1{,}000`: "1,234.5" -> "1234.5".
_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ZERO_PADDED_INTEGER = re.compile(r"-?0\d+")
# A plain decimal number (sign, digits, point, exponent): what vote keys put in one form.
PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def vote_key(answer: str | None) -> str | None:
    """The spelling an extracted answer votes under before any math-verify comparison:
    `normalize_gold`, float noise rounded away ("18.000000000000004" -> "18", see
    `round_float_noise`), and numbers in one form ("18.0", "18", "018" -> "18"; "0.50" -> "0.5"),
    so the same value from a TinyGSM function (often a float) and from a boxed text answer count as
    one vote without a comparison."""
    if answer is None:
        return None
    text = round_float_noise(normalize_gold(answer))
    if PLAIN_NUMBER.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:
            return text
        if number.is_finite():
            return format(number.normalize(), "f") if number != 0 else "0"
    return text


def normalize_gold(answer: str) -> str:
    """One canonical spelling of a gold answer, shared by the grader and `vote_key`.

    Strips whitespace, `$...$` math delimiters and a leading currency sign, thousands separators
    ("1,000" -> "1000") and integer zero-padding (AIME's "033" -> "33"). Anything else (LaTeX,
    tuples, intervals) is left for math-verify.
    """
    text = answer.strip()
    if len(text) > 1 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    text = re.sub(r"^\\?\$\s*(?=[-\d.])", "", text)
    ungrouped = text.replace(",\\!", ",").replace("{,}", ",").replace(", ", ",")
    if _GROUPED_NUMBER.fullmatch(ungrouped):
        text = ungrouped.replace(",", "")
    if _ZERO_PADDED_INTEGER.fullmatch(text):
        text = str(int(text))
    return text


# A float holds 15 significant decimal digits exactly; str() of a computed float can show 17, the
# last of them binary rounding noise (0.1 * 3 -> 0.30000000000000004).
FLOAT_DIGITS = 15
_DECIMAL_LITERAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")


def round_float_noise(text: str) -> str:
    """A decimal number written with more significant digits than a float holds, rounded to
    FLOAT_DIGITS of them and written positionally: "18.000000000000004" -> "18",
    "0.30000000000000004" -> "0.3". Anything else is returned as given: integers (no point or
    exponent: Python ints are exact, and an AIME answer has no noise), shorter decimals, non-numbers.
    """
    stripped = text.strip()
    if not _DECIMAL_LITERAL.fullmatch(stripped):
        return text
    try:
        number = Decimal(stripped).normalize()
    except InvalidOperation:
        return text
    if not number.is_finite() or number.is_zero() or len(number.as_tuple().digits) <= FLOAT_DIGITS:
        return text
    rounded = number.quantize(Decimal(1).scaleb(number.adjusted() - FLOAT_DIGITS + 1)).normalize()
    return format(rounded, "f")
