"""argparse value types shared by the command-line tools."""

from __future__ import annotations

import argparse


def unit_interval(value: str) -> float:
    """Parse a confidence between 0 and 1."""
    number = number_value(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0-1: give a confidence between 0 and 1")
    return number


def cosine(value: str) -> float:
    """Parse a cosine similarity between -1 and 1."""
    number = number_value(value)
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside -1 to 1: give a cosine similarity")
    return number


def number_value(value: str) -> float:
    """Parse a number."""
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
