"""OFT as PEFT ≥ 0.17 saves it: ``oft_R.weight`` [n, b(b−1)/2], one row per block of b
*input* features (LyCORIS and kohya OFT rotate output rows instead, see ``oft.py``).

Each row holds the upper triangle of a skew-symmetric block Q (Q[i, j] = v, Q[j, i] = −v).
From the folder's ``adapter_config.json`` (`Convention`):

    COFT (``coft``):     Q ← Q · ε' / ‖Q‖  per block when ‖Q‖ > ε' = eps / √n
    Cayley:              R = (I − Q)(I + Q)⁻¹                      (``use_cayley_neumann`` off)
    Neumann (default):   R = I + 2Q + 2Q² + … + 2Q^(t−2) + Q^(t−1)  t = ``num_cayley_neumann_terms``
                         (PEFT's series: t = 3 sums the same terms as t = 4)

The series expands (I + Q)(I − Q)⁻¹, the inverse of the exact path's rotation: PEFT's two
settings turn the same file opposite ways. We compute each as PEFT does.
    ``block_share``:     one block (n = 1) repeated over all in/b blocks of the input

PEFT rotates the input, x ↦ x·R_bd with R_bd = blockdiag(R_k), which is its merged weight
W' = W·R_bdᵀ over W's input axis (a conv's W read as [out, in·kh·kw], PEFT's layout). PEFT has
no user weight for OFT; we interpolate as ComfyUI and LyCORIS do for OFT: ΔW = m·(W·R_bdᵀ − W).
For a conv with a kernel larger than 1×1, PEFT's unmerged forward (it rotates unfolded,
overlapping patches and folds them back, summing the overlaps) differs from its own merge; we
follow the merge, which is what ``merge_and_unload`` leaves in the model.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, f32


class PeftOFTLayer(Layer):
    kind = "oft"
    leaves = frozenset({"oft_R"})
    triggers = ("oft_R",)
    spellings = MappingProxyType({"oft_R.weight": "oft_R", "oft_r": "oft_r"})
    refused = MappingProxyType({"oft_r": "OFT in PEFT's older layout (oft_r)"})
    linear = False

    def __init__(
        self, vec: Tensor, neumann_terms: int | None, coft_eps: float | None, shared: bool
    ):
        if vec.dim() != 2 or vec.shape[0] < 1:
            raise LoRAFormatError(f"oft_R must be [blocks, b(b-1)/2], got {tuple(vec.shape)}")
        n_upper = int(vec.shape[1])
        b = (1 + math.isqrt(1 + 8 * n_upper)) // 2
        if b < 2 or b * (b - 1) // 2 != n_upper:
            raise LoRAFormatError(
                f"oft_R rows of {n_upper} values are not the upper triangle of a square block"
            )
        if shared and vec.shape[0] != 1:
            raise LoRAFormatError(f"block_share needs one oft_R row, got {vec.shape[0]}")
        if neumann_terms is not None and neumann_terms < 1:
            raise LoRAFormatError(f"num_cayley_neumann_terms must be ≥ 1, got {neumann_terms}")
        self.vec = vec
        self.block = b
        self.neumann_terms = neumann_terms
        self.coft_eps = coft_eps
        self.shared = shared

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        return cls(
            leaves["oft_R"],
            convention.oft_neumann_terms,
            convention.oft_coft_eps,
            convention.oft_block_share,
        )

    def tensors(self):
        return {"oft_R": self.vec}

    def in_features(self) -> int | None:
        return None if self.shared else int(self.vec.shape[0]) * self.block

    def check(self, weight_shape) -> str | None:
        fan_in = math.prod(weight_shape[1:])
        n, b = int(self.vec.shape[0]), self.block
        fits = fan_in % b == 0 if self.shared else fan_in == n * b
        if not fits:
            return f"OFT of {n} blocks of {b} input features does not fit weight {weight_shape}"
        return None

    def rotation(self, device) -> Tensor:
        """R per block, fp32 [n, b, b]."""
        vec = f32(self.vec, device)
        n, b = int(vec.shape[0]), self.block
        rows, cols = torch.triu_indices(b, b, 1, device=device)
        q = torch.zeros(n, b, b, device=device)
        q[:, rows, cols] = vec
        q = q - q.transpose(1, 2)
        if self.coft_eps is not None:
            eps = self.coft_eps / math.sqrt(n)
            norm = torch.linalg.norm(q, dim=(1, 2), keepdim=True)
            q = torch.where(norm <= eps, q, eps * q / norm)
        eye = torch.eye(b, device=device)
        if self.neumann_terms is None:
            return torch.linalg.solve(eye + q, eye - q, left=False)
        return self._neumann(q, self.neumann_terms)

    @staticmethod
    def _neumann(q: Tensor, terms: int) -> Tensor:
        """PEFT's truncated series (see the module docstring)."""
        r = torch.eye(q.shape[-1], device=q.device).expand(q.shape).clone()
        if terms == 1:
            return r
        if terms == 2:
            return r + 2 * q
        power = q
        for k in range(1, max(2, terms - 2) + 1):
            power = power if k == 1 else power @ q
            r = r + 2 * power
        return r + power @ q

    def residuals(self, params, weight):
        w = params["weight"]
        b = self.block
        turn = self.rotation(w.device) - torch.eye(b, device=w.device)
        rows = w.reshape(w.shape[0], -1, b)
        # a shared block (n = 1) broadcasts over all of the input's blocks
        dw = torch.einsum("o n k, n c k -> o n c", rows, turn) * weight
        return {"weight": dw.reshape(w.shape), "bias": None}
