"""The LoRA engine: read every common LoRA format for SD1/SD2/SDXL and patch it exactly.

```python
from loraworks.lora import load_lora, apply_loras, LoRAPatcher
lora = load_lora("file.safetensors")       # .base, .format, .layers, .metadata
with apply_loras(pipe, [(lora, 0.8)]) as report:
    ...
```
See docs/formats.md for the formats and the maths of every layer kind.
"""

from .apply import apply_loras
from .backups import STRATEGIES, OriginalWeights, StrategyName
from .blocks import PRESETS as LBW_PRESETS
from .components import model_base
from .errors import (
    LoRABaseMismatch,
    LoRABusy,
    LoRAError,
    LoRAFormatError,
    LoRARestoreError,
    LoRAShapeError,
    LoRAUnmatchedKeys,
    WeightFileError,
)
from .files import Header, WeightFile, read_header, read_weights
from .load import load_lora
from .model import LoRA
from .patcher import LoRAPatcher, PatchReport, Stack
from .probe import probe_base
from .staging import free_bytes, same_device
from .strength import (
    Strength,
    component_weights,
    normalise_strength,
    with_components,
    with_user_presets,
)

__all__ = [
    "LBW_PRESETS",
    "STRATEGIES",
    "Header",
    "LoRA",
    "LoRABaseMismatch",
    "LoRABusy",
    "LoRAError",
    "LoRAFormatError",
    "LoRAPatcher",
    "LoRARestoreError",
    "LoRAShapeError",
    "LoRAUnmatchedKeys",
    "OriginalWeights",
    "PatchReport",
    "Stack",
    "StrategyName",
    "Strength",
    "WeightFile",
    "WeightFileError",
    "apply_loras",
    "component_weights",
    "free_bytes",
    "load_lora",
    "model_base",
    "normalise_strength",
    "probe_base",
    "read_header",
    "read_weights",
    "same_device",
    "with_components",
    "with_user_presets",
]
