"""LoRA files made by the real producers (LyCORIS, PEFT, diffusers, kohya layout by hand) on the
tiny fixtures, each with a reference: the producer's own forward pass at a user weight m.

How m reaches each producer (documented here once; the tests only pass m on):

* LyCORIS: the network multiplier (`set_multiplier`), one network per component, so a
  per-component weight dict sets each network on its own.
* PEFT / diffusers (LoRA, DoRA, rsLoRA, LoHa, LoKr): `set_scale(adapter, m)` on every tuner
  layer, which is what diffusers' `set_adapters(..., weights)` does. For DoRA this scales
  s·BA inside the norm. PEFT IA3 has no scale: only m = 1 is tested.
* kohya layout by hand: diffusers `load_lora_weights`, `set_adapters` with the per-component
  weights, `fuse_lora`; the hand formula W + m·(α/r)·up@down is a second reference, used to
  check the files themselves (test_producers.py).

Every adapter parameter is drawn at random (producers zero-initialise one factor), so that
every LoRA changes every component it targets.
"""

from tests.lora_parity.common import WEIGHTS, Produced, Weight, fresh
from tests.lora_parity.kohya_files import HAND_TARGETS, kohya_hand_file, kohya_hand_path
from tests.lora_parity.lycoris_files import LYCORIS_KINDS, lycoris_file, lycoris_stack
from tests.lora_parity.peft_files import (
    PEFT_KINDS,
    attn_procs_file,
    diffusers_files,
    lcm_lora_file,
    peft_folder,
)

__all__ = [
    "HAND_TARGETS",
    "LYCORIS_KINDS",
    "PEFT_KINDS",
    "WEIGHTS",
    "Produced",
    "Weight",
    "attn_procs_file",
    "diffusers_files",
    "fresh",
    "kohya_hand_file",
    "kohya_hand_path",
    "lcm_lora_file",
    "lycoris_file",
    "lycoris_stack",
    "peft_folder",
]
