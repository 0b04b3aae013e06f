"""Learned line layouts: what lets runs of HF dicts and Megatron iteration lines be parsed in bulk."""

from __future__ import annotations

import re

from trainscope.collector.sources.logformats.lines import NOT_RANK, STEP_KEYS, TOTAL_KEYS


class Layout:
    """A learned line layout: one anchored regex whose groups are the values, and the metric name of each.

    `whole` (None when the keys hold a carriage return or an escape, or the values are quoted) fullmatches a line
    exactly when `feed` would read that line with `rx` and nothing else: no ANSI code, no carriage return, no
    torchrun rank prefix, `rx` at the first `{'` (HF) or `iteration ` (Megatron) of the line. `keep` are the names
    of the points of one line, `mask` which groups are their values (None: all).
    """

    __slots__ = ("fmt", "keep", "mask", "names", "rx", "step_at", "total_at", "train", "whole")

    def __init__(self, fmt: str, keys: tuple[str, ...], quoted: bool = False):
        self.fmt = fmt
        self.step_at = self.total_at = -1
        self.train = False
        plain = not quoted and not any("\r" in k or "\x1b" in k for k in keys)
        if fmt == "hf":

            def dict_of(value: str) -> str:
                q = "'" if quoted else ""  # transformers 5 prints each value as a quoted string
                return r"\{" + ", ".join(f"'{re.escape(k)}': {q}({value}){q}" for k in keys) + r"\}"

            self.rx = re.compile(dict_of(r"[^,{}']+" if quoted else r"[^,{}]+"))
            # no rank prefix, no "{'" before the dict (atomic: it cannot end elsewhere); no \r or ESC anywhere
            # possessive `++`/`*+`: a value's class excludes what follows it, so no backtracking is ever useful
            whole = (NOT_RANK + r"(?>[^{\r\x1b]*(?:\{(?!')[^{\r\x1b]*)*)" + dict_of(r"[^,{}\r\x1b]++")
                     + r"[^\r\x1b]*+")
            names: list[str | None] = []
            for at, k in enumerate(keys):
                if k in STEP_KEYS:
                    self.step_at = at
                elif k in TOTAL_KEYS:
                    self.total_at = at
                self.train = self.train or k == "loss"
                names.append(None if k in STEP_KEYS or k in TOTAL_KEYS else k)
            self.names = tuple(names)
            self.keep = tuple(k for k in names if k is not None)
            self.mask = None if len(self.keep) == len(names) else tuple(k is not None for k in names)
        else:  # megatron: iteration A/ B, then the fields

            def line_of(value: str, sp: str = " *") -> str:
                return (rf"iteration +(\d+){sp}/{sp}(\d+){sp}\|"
                        + "".join(f"{sp}{re.escape(k)}{sp}:{sp}({value}){sp}\\|" for k in keys))

            # Anchored at the end: text after the last field may not hold another `name: value |` field, or a
            # line that grew a field (a metric logged from some step on) would silently lose it.
            self.rx = re.compile(line_of(r"[^ |]+") + r"[^:|\r\x1b]*$")
            # no rank prefix, no "iteration " before the match (atomic, as above); no \r or ESC anywhere
            # possessive quantifiers (13% faster here): names are trimmed and a value's class excludes the space
            # and bar after it, so giving characters back could never lead to a match
            whole = (NOT_RANK + r"(?>[^i\r\x1b]*(?:i(?!teration )[^i\r\x1b]*)*)"
                     + line_of(r"[^ |\r\x1b]++", " *+") + r"[^:|\r\x1b]*+")
            self.names = self.keep = keys  # type: ignore[assignment]
            self.mask = (False, False) + (True,) * len(keys)
        self.whole = re.compile(whole).fullmatch if plain and self.keep else None


def first_bad(ms: list[re.Match[str]], skip: int) -> int:
    """Index of the first match whose values (groups after the first `skip`) are not all numbers."""
    for j, m in enumerate(ms):
        try:
            list(map(float, m.groups()[skip:]))
        except ValueError:
            return j
    return len(ms)
