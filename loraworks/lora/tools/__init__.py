"""LoRA tools: inspect, resize, merge, extract, bake and convert — pure functions over the
engine's typed layers (each kind's exact ΔW), plus writers for kohya, diffusers and PEFT files.

```python
from loraworks.lora import load_lora
from loraworks.lora.tools import RankRule, resize, merge, extract, bake, convert, save_lora
small = resize(load_lora("x.safetensors"), RankRule(rank=8)).lora       # or method="sv_fro"
save_lora(small, Path("x-r8.safetensors"))                               # atomic, kohya
both = merge([(a, 1.0), (b, 0.5)]).lora                                  # concat: exact
```
Each maker returns a `ToolResult` (the `LoRA` and a `LayerReport` per layer). See
docs/tools.md for the maths and the choices.
"""

from .atomic import check_output
from .bake import SINGLE_FILE_SUFFIX, bake
from .convert import convert
from .errors import IncompatibleModels, LoRAToolError, OutputExists, RankError, UnsupportedKind
from .extract import extract
from .inspect import Inspection, file_hashes, inspect_lora
from .merge import merge
from .rank import METHODS, RankRule
from .resize import resize
from .result import TOOL_KEY, LayerReport, ToolResult
from .write import FORMATS, save_lora

__all__ = [
    "FORMATS",
    "METHODS",
    "SINGLE_FILE_SUFFIX",
    "TOOL_KEY",
    "IncompatibleModels",
    "Inspection",
    "LayerReport",
    "LoRAToolError",
    "OutputExists",
    "RankError",
    "RankRule",
    "ToolResult",
    "UnsupportedKind",
    "bake",
    "check_output",
    "convert",
    "extract",
    "file_hashes",
    "inspect_lora",
    "merge",
    "resize",
    "save_lora",
]
