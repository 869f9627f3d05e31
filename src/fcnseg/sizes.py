"""Image sizes as users give them: ``N`` or ``HxW`` on the command line, an int or ``(h, w)`` in Python.

One parser for every size option (``train --crop-size``, ``bench --sizes``, ``models --size``)
and the paired transforms' sizes.
"""
from __future__ import annotations

import argparse
import numbers
from typing import Sequence

from fcnseg.errors import ConfigError


def parse_size(text: str, what: str = "size") -> int | tuple[int, int]:
    """``"512"`` -> ``512``; ``"360x480"`` -> ``(360, 480)``. ConfigError unless every size is >= 1."""
    try:
        parts = [int(v) for v in text.strip().lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ConfigError(f"{what} {text!r}: expected N or HxW, e.g. 512 or 360x480")
    if min(parts) < 1:
        raise ConfigError(f"{what} {text!r}: sizes must be >= 1")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def size_pair(value: int | str | Sequence[int], what: str = "size") -> tuple[int, int]:
    """``512`` / ``"512"`` -> ``(512, 512)``; ``(h, w)`` / ``"HxW"`` -> ``(h, w)``; sizes >= 1."""
    if isinstance(value, str):
        value = parse_size(value, what)
    if isinstance(value, numbers.Integral):
        h = w = int(value)
    else:
        try:
            h, w = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be an int or (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} must be >= 1, got {value!r}")
    return h, w


def size_argument(text: str) -> int | tuple[int, int]:
    """argparse ``type=`` for an ``N`` or ``HxW`` option: argparse reports the error as usage."""
    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
