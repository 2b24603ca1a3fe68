"""Answer spellings before comparison: gold normalisation, float noise, vote keys."""

from __future__ import annotations

import pytest

from echochamber.verify.normalize import normalize_gold, round_float_noise, vote_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        (" $18 ", "18"),
        ("\\$32,\\!348", "32348"),
        ("1,000", "1000"),
        ("1,450,000", "1450000"),
        ("-2,125.5", "-2125.5"),
        ("033", "33"),
        ("-007", "-7"),
        ("0", "0"),
        ("0.5", "0.5"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("1,-2", "1,-2"),  # a list of two answers, not a grouped number
        ("3, 5, 7", "3, 5, 7"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_normalize_gold(raw, expected):
    assert normalize_gold(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18.000000000000004", "18"),
        ("0.30000000000000004", "0.3"),
        ("-3.3000000000000003", "-3.3"),
        ("0.3333333333333333", "0.333333333333333"),
        ("1.0000000000000002e-07", "0.0000001"),
        ("1.2345678901234567e+20", "123456789012346000000"),
        ("18.00000000000001", "18"),  # 16 significant digits: past what a float holds exactly
        ("18.0000000000001", "18.0000000000001"),  # 15: kept as given
        ("123456789012345678901", "123456789012345678901"),  # an integer is exact: kept
        ("18.0", "18.0"),
        ("1e-05", "1e-05"),
        ("\\frac{1}{3}", "\\frac{1}{3}"),
    ],
)
def test_round_float_noise(raw, expected):
    assert round_float_noise(raw) == expected


def test_vote_key_merges_spellings_of_one_number():
    assert vote_key("18.0") == vote_key("18") == vote_key("018") == vote_key("$18") == "18"
    assert vote_key("0.50") == "0.5"
    assert vote_key("1,000") == "1000"
    assert vote_key("-0.0") == "0"
    assert vote_key("18.000000000000004") == "18"  # a TinyGSM function's float noise
    assert vote_key("\\frac{1}{2}") == "\\frac{1}{2}"
    assert vote_key(None) is None
