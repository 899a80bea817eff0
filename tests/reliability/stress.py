"""Random apply/restore sequences on a tiny SD1 model (shared by the test and
`bench/restore_stress.py`).

A sequence mixes `LoRAPatcher.set` with random stacks (every layer kind, float and per-component
weights, weight 0), invalid stacks that must be refused before any change, `apply_loras` with an
exception raised inside, nested `apply_loras` (refused with `LoRABusy`), re-`set` of the same
stack and `restore`. Checked along the way: a refused `set` leaves the model exactly as it was;
the same stack always patches to the same bits, whatever came before; and after the final
`restore` every parameter is bit-identical and the same `Parameter` object.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import torch

from loraworks.lora import LoRA, LoRABusy, LoRAError, LoRAPatcher, apply_loras, load_lora
from tests.fixtures.models import Components, build_components
from tests.models.lora_files import kohya_sdxl_tensors
from tests.reliability.kinds import random_lora
from tests.reliability.outcomes import Model, same_bits

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS = (-1.0, -0.5, 0.0, 0.3, 0.8, 1.0, 1.5)


class Boom(Exception):
    """Raised inside an `apply_loras` block: the restore must still happen."""


def _misfit_lora() -> LoRA:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd = {
        f"{key}.lora_down.weight": torch.randn(4, 32),  # the module takes 768 inputs
        f"{key}.lora_up.weight": torch.randn(32, 4),
    }
    return load_lora((sd, {}), base="sd1", name="misfit")


@dataclass
class Rig:
    """One model of one dtype, its long-lived patcher, a pool of LoRAs and bad LoRAs."""

    dtype: str
    components: Components
    model: Model
    patcher: LoRAPatcher
    loras: list[LoRA]
    bad: list[LoRA]
    kinds: Counter = field(default_factory=Counter)
    patched: dict[tuple, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, dtype: str, pool: int = 8, seed: int = 0) -> Rig:
        components = build_components("sd1", seed=seed)
        rng = random.Random(seed)
        loras, kinds = [], Counter()
        for _ in range(pool):
            lora, used = random_lora(components, rng, modules=rng.randint(2, 8))
            loras.append(lora)
            kinds.update(used)
        for module in components.as_mapping().values():
            module.to(DTYPES[dtype])
        mapping = components.as_mapping()
        bad = [_misfit_lora(), load_lora((kohya_sdxl_tensors(), {}), name="sdxl")]
        return cls(dtype, components, Model.of(mapping), LoRAPatcher(mapping), loras, bad, kinds)

    def _now(self) -> dict[str, torch.Tensor]:
        return {
            f"{c}.{n}": p.detach()
            for c, m in self.model.components.items()
            for n, p in m.named_parameters()
        }

    def _tensors(self) -> dict[str, int]:
        """Which storage every parameter holds now (cheap; values are checked elsewhere)."""
        return {k: v.data_ptr() for k, v in self._now().items()}

    def _assert_same_tensors(self, before: dict[str, int], label: str) -> None:
        """Nothing swapped; in-place writes would show in `_check_patched` (patched weights)
        or in the final bit-exact check (originals, which the restore puts back)."""
        now = self._tensors()
        moved = [k for k, ptr in before.items() if now[k] != ptr]
        assert not moved, f"{label}: {len(moved)} parameters changed, e.g. {moved[:2]}"

    def random_stack(self, rng: random.Random) -> list[tuple[LoRA, object]]:
        stack = []
        for lora in rng.sample(self.loras, rng.randint(1, 4)):
            if rng.random() < 0.3:
                weight: object = {"unet": rng.choice(WEIGHTS)}
                if rng.random() < 0.5:
                    weight["text_encoder"] = rng.choice(WEIGHTS)
            else:
                weight = rng.choice(WEIGHTS)
            stack.append((lora, weight))
        return stack

    def _key(self, stack) -> tuple:
        return tuple((id(lo), repr(w)) for lo, w in stack)

    def _check_patched(self, stack) -> None:
        """The same stack patches to the same bits whatever was applied before."""
        now = self._now()
        originals = self.model.original_ptrs
        changed = {k: v.clone() for k, v in now.items() if v.data_ptr() != originals[k]}
        for k, v in changed.items():
            if not bool(torch.isfinite(v).all()):
                raise AssertionError(f"{self.dtype}: non-finite patched weight {k}")
        seen = self.patched.setdefault(self._key(stack), changed)
        assert seen.keys() == changed.keys(), f"{self.dtype}: patched a different set of weights"
        for k, v in seen.items():
            assert same_bits(v, changed[k]), f"{self.dtype}: {k} patched differently this time"

    # --- operations ---------------------------------------------------------------------------
    def op_set(self, rng: random.Random) -> None:
        stack = self.random_stack(rng)
        self.patcher.set(stack)
        self._check_patched(stack)

    def op_set_bad(self, rng: random.Random) -> None:
        before, current = self._tensors(), list(self.patcher.current)
        stack = [*self.random_stack(rng), (rng.choice(self.bad), 1.0)]
        rng.shuffle(stack)
        try:
            self.patcher.set(stack)
        except LoRAError:
            pass
        else:
            raise AssertionError(f"{self.dtype}: an invalid stack was applied")
        self._assert_same_tensors(before, f"{self.dtype}: refused set changed the model")
        if current:
            self._check_patched(current)

    def op_same_again(self, rng: random.Random) -> None:
        before, current = self._tensors(), list(self.patcher.current)
        self.patcher.set(current)
        self._assert_same_tensors(before, f"{self.dtype}: re-set of the same stack changed it")
        if current:
            self._check_patched(current)

    def op_raise_inside(self, rng: random.Random) -> None:
        self.patcher.restore()
        try:
            with apply_loras(self.model.components, self.random_stack(rng)):
                raise Boom
        except Boom:
            pass
        self.model.assert_restored_storage(f"{self.dtype}: after an exception inside apply_loras")

    def op_nested(self, rng: random.Random) -> None:
        self.patcher.restore()
        outer = [(lo, 1.0) for lo, _ in self.random_stack(rng)]
        with apply_loras(self.model.components, outer):
            try:
                with apply_loras(self.model.components, [(rng.choice(self.loras), 0.5)]):
                    raise AssertionError(f"{self.dtype}: nested apply_loras was allowed")
            except LoRABusy:
                pass
            self._check_patched(outer)
        self.model.assert_restored_storage(f"{self.dtype}: after a refused nested apply_loras")

    def op_restore(self, rng: random.Random) -> None:
        self.patcher.restore()
        self.model.assert_restored_storage(f"{self.dtype}: after restore")

    OPS = ("set", "set", "set", "set_bad", "same_again", "raise_inside", "nested", "restore")

    def run_sequence(self, rng: random.Random, length: int = 6) -> Counter:
        ops = Counter()
        for _ in range(length):
            name = rng.choice(self.OPS)
            getattr(self, f"op_{name}")(rng)
            ops[name] += 1
        self.patcher.restore()
        self.model.assert_untouched(f"{self.dtype}: at the end of a sequence")
        return ops
