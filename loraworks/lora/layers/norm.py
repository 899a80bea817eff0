"""Norm-layer deltas (LyCORIS ``NormModule``, A1111 ``network_norm.py``): ``w_norm``, ``b_norm``.

weight' = weight + m·w_norm,   bias' = bias + m·b_norm   (GroupNorm / LayerNorm affine)
"""

from __future__ import annotations

from .full import FullLayer


class NormLayer(FullLayer):
    kind = "norm"
    leaves = frozenset({"w_norm", "b_norm"})
    triggers = ("w_norm",)
    w_key, b_key = "w_norm", "b_norm"

    def in_features(self):
        return None
