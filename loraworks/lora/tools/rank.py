"""How many singular values a layer keeps: a fixed rank, or kohya's dynamic rules.

With σ₁ ≥ σ₂ ≥ … the singular values of one layer's ΔW (kohya sd-scripts
``networks/resize_lora.py``, ``--dynamic_method``):

* ``sv_ratio=x``: keep every σᵢ > σ₁/x;
* ``sv_cumulative=x``: the fewest k with Σᵢ≤ₖ σᵢ / Σ σᵢ ≥ x;
* ``sv_fro=x``: the fewest k with √(Σᵢ≤ₖ σᵢ² / Σ σᵢ²) ≥ x, i.e. the truncated ΔW keeps at
  least the fraction x of the Frobenius norm ‖ΔW‖_F (x² of its energy Σσ²).

The result is clamped to [1, number of singular values] and, when a rank is also given, to that
rank (kohya: ``--new_rank`` is the hard limit of a dynamic resize). kohya also caps the rank at
(number of singular values − 1); we do not, so that a rule asking for everything gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .errors import RankError

Method = Literal["sv_ratio", "sv_fro", "sv_cumulative"]
METHODS: tuple[Method, ...] = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class RankRule:
    """A fixed ``rank``, or a dynamic ``method=target`` (with ``rank`` as its cap, if given)."""

    rank: int | None = None
    method: Method | None = None
    target: float | None = None

    def __post_init__(self) -> None:
        if self.rank is None and self.method is None:
            raise RankError("give a rank or a dynamic rule (sv_ratio, sv_fro, sv_cumulative)")
        if self.rank is not None and (isinstance(self.rank, bool) or self.rank < 1):
            raise RankError(f"rank must be at least 1, got {self.rank}")
        if self.method is None:
            return
        if self.method not in METHODS:
            raise RankError(f"unknown dynamic method {self.method!r} ({', '.join(METHODS)})")
        t = self.target
        if t is None or not t == t:
            raise RankError(f"{self.method} needs a number")
        if self.method == "sv_ratio" and not t >= 1:
            raise RankError(f"sv_ratio must be ≥ 1 (keeps σ > σ_max/ratio), got {t}")
        if self.method != "sv_ratio" and not 0 < t <= 1:
            raise RankError(f"{self.method} must lie in (0, 1], got {t}")

    @classmethod
    def parse(cls, rank: int | None, dynamic: str | None) -> RankRule:
        """From the CLI: ``--rank r`` and/or ``--dynamic sv_fro=0.9``."""
        if dynamic is None:
            return cls(rank=rank)
        method, sep, value = dynamic.partition("=")
        try:
            target = float(value)
        except ValueError:
            target = None
        if not sep or target is None:
            methods = ", ".join(METHODS)
            raise RankError(f"--dynamic takes METHOD=NUMBER ({methods}), got {dynamic!r}")
        return cls(rank=rank, method=method.strip(), target=target)  # type: ignore[arg-type]

    @property
    def fixed(self) -> bool:
        return self.method is None

    def describe(self) -> str:
        if self.method is None:
            return f"rank {self.rank}"
        cap = f", rank ≤ {self.rank}" if self.rank is not None else ""
        return f"{self.method}={self.target:g}{cap}"

    def choose(self, s: torch.Tensor) -> int:
        """How many of the singular values ``s`` (descending) to keep."""
        n = int(s.numel())
        s = s.double()
        if self.method is None:
            k = n
        elif self.method == "sv_ratio":
            k = int((s > s[0] / self.target).sum())
        else:
            parts = s * s if self.method == "sv_fro" else s
            goal = self.target**2 if self.method == "sv_fro" else self.target
            fractions = torch.cumsum(parts, 0) / parts.sum()
            k = int(torch.searchsorted(fractions, torch.tensor(goal, dtype=s.dtype))) + 1
        k = max(1, min(k, n))
        return min(k, self.rank) if self.rank is not None else k

    def check_dims(self, dims: dict[str, int]) -> None:
        """A fixed rank above a layer's dimensions (min of rows and columns of its ΔW) is
        refused, naming the layers: the user asked for something the layer cannot hold."""
        if self.method is not None:
            return
        over = {t: d for t, d in dims.items() if self.rank > d}
        if over:
            shown = ", ".join(f"{t} ({d})" for t, d in list(over.items())[:5])
            more = f" and {len(over) - 5} more" if len(over) > 5 else ""
            raise RankError(
                f"rank {self.rank} is above the dimensions of {len(over)} layer(s): {shown}{more}; "
                f"choose a rank ≤ {min(over.values())} or a --dynamic rule"
            )
