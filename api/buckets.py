"""Where `downsample=N`'s step buckets fall in a series' step range [lo, hi]: bucket(step) = (step - org) * num // den,
in exact integer arithmetic (PostgreSQL's bigint `/` truncates, and step - org is never negative).

- `even` (the default): B equal buckets over [lo, hi]: org = lo, num = B, den = hi - lo + 1. The bucket edges move
  whenever the range grows (a live run's newest step), so no two answers share them.
- `aligned`: buckets of w steps, w the smallest power of two that covers [lo, hi] with at most B buckets, starting at
  multiples of w: org = floor(lo / w) * w, num = 1, den = w. Fewer buckets than B when w overshoots (B/2 at worst),
  and edges that stay put as the range grows. Every edge is an edge of the store's rollup blocks of w steps or
  fewer (api/rollup.py), so the answer is read from whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

EVEN = "even"  # the other kind: "aligned"


@dataclass(frozen=True, slots=True)
class Grid:
    """bucket(step) = (step - org) * num // den for steps >= org."""

    org: int
    num: int
    den: int

    def of(self, step: int) -> int:
        return (step - self.org) * self.num // self.den

    def start(self, b: int) -> int:
        """The first step of bucket b."""
        return self.org + -(-(b * self.den) // self.num)

    @property
    def aligned(self) -> bool:
        """Power-of-two buckets at multiples of their width: a rollup block of that width or finer never
        straddles an edge."""
        return self.num == 1 and self.den & (self.den - 1) == 0

    @property
    def width(self) -> int:
        """Steps per bucket, at least (even buckets differ by one step at most)."""
        return self.den // self.num


def grid(lo: int, hi: int, nb: int, kind: str = EVEN) -> Grid:
    """The buckets of a series spanning [lo, hi] with at most `nb` of them."""
    if kind == EVEN:
        return Grid(lo, nb, hi - lo + 1)
    w = 1
    while hi // w - lo // w + 1 > nb:  # floor division: right for negative steps too
        w <<= 1
    return Grid(lo // w * w, 1, w)
