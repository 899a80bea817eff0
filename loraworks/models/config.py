"""The models root's config file (`config.toml`): every default the product applies.

Read with `tomllib`; the file is written once, from `DEFAULT_CONFIG_TOML`, on first use, so a
user sees every setting with its comment. Unknown keys are an error (a typo must not be
silently ignored).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraworks.lora.blocks import FORMS, PRESETS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationDefaults(_Section):
    steps: int = Field(25, ge=1, le=1000)
    cfg: float = 7.5
    scheduler: str = "euler"
    width: int = Field(0, ge=0)  # 0: the main model's native size
    height: int = Field(0, ge=0)
    lora_weight: float = 0.75  # "most LoRAs perform best at a weight of .75-1"


#: timestep spacing of the schedulers that read one (`generation.schedulers`)
Spacing = Literal["leading", "trailing", "linspace"]


class PresetOverride(_Section):
    """What a few-step preset changes for files distilled for one step count (Hyper-SD's
    1-step unified LoRA samples with TCD at eta 1, its N-step files with DDIM trailing)."""

    scheduler: str | None = None
    spacing: Spacing | None = None
    eta: float | None = Field(None, ge=0.0, le=1.0)
    cfg: float | None = Field(None, ge=0.0)


class FewStepPreset(_Section):
    """How a few-step family samples; applied to the fields a request leaves unset when a
    LoRA of the family (record `fewstep`) is in the stack. `steps` is the fallback when the
    file does not state the step count it was distilled for."""

    scheduler: str
    spacing: Spacing | None = None  # None: the main model's own
    eta: float | None = Field(None, ge=0.0, le=1.0)  # None: the scheduler's default
    steps: int = Field(4, ge=1, le=50)
    cfg: float = Field(1.0, ge=0.0)
    lora_weight: float = 1.0  # the family's LoRA
    other_lora_weight: float = 0.75  # every other LoRA of the stack
    by_steps: dict[int, PresetOverride] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_lcm_spelling(cls, data: Any) -> Any:
        """`lcm_lora_weight`: the `[lcm]` key of config files written before #18."""
        if isinstance(data, dict) and "lcm_lora_weight" in data:
            data = dict(data)
            data.setdefault("lora_weight", data.pop("lcm_lora_weight"))
        return data


# Each family's defaults (a line deleted from its section gets its default back).
class LCMPreset(FewStepPreset):
    scheduler: str = "lcm"
    lora_weight: float = 0.35
    other_lora_weight: float = 0.45


class TCDPreset(FewStepPreset):
    scheduler: str = "tcd"
    eta: float | None = Field(0.3, ge=0.0, le=1.0)


class LightningPreset(FewStepPreset):
    scheduler: str = "euler"
    spacing: Spacing | None = "trailing"


class HyperPreset(FewStepPreset):
    scheduler: str = "ddim"
    spacing: Spacing | None = "trailing"
    steps: int = Field(8, ge=1, le=50)
    by_steps: dict[int, PresetOverride] = {1: PresetOverride(scheduler="tcd", eta=1.0)}


class PCMPreset(FewStepPreset):
    scheduler: str = "ddim"
    spacing: Spacing | None = "trailing"


class CacheSettings(_Section):
    ram_budget_gb: float = Field(8.0, gt=0)
    max_loras: int = Field(32, ge=0)
    lora_gpu_gb: float = Field(1.0, ge=0)
    device_working_mem_gb: float = Field(3.0, ge=0)


class ComputeSettings(_Section):
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class PatchSettings(_Section):
    """Where a patched weight's original waits (`loraworks.lora.backups`)."""

    strategy: Literal["auto", "swap", "inplace"] = "auto"


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=1, le=65535)
    token: str | None = None


class Limits(_Section):
    """What one request, install or record may cost; refusals name the setting
    (`limits.max_steps`), so a user on a small machine knows what to lower or raise."""

    max_side: int = Field(2048, ge=64)
    max_batch: int = Field(8, ge=1)
    max_steps: int = Field(150, ge=1)
    max_queue: int = Field(100, ge=1)
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    max_install_gb: float = Field(20.0, gt=0)
    install_timeout_s: float = Field(3600.0, gt=0)
    metadata_kept_kb: int = Field(256, ge=1)


class ClusterSettings(_Section):
    """`loraworks serve --cluster` (docs/cluster.md)."""

    max_ongoing_requests: int = Field(7, ge=1)
    ready_timeout_s: float = Field(300.0, gt=0)
    batch_window_ms: float = Field(0.0, ge=0)


class Config(_Section):
    generation: GenerationDefaults = GenerationDefaults()
    lcm: LCMPreset = LCMPreset()
    tcd: TCDPreset = TCDPreset()
    lightning: LightningPreset = LightningPreset()
    hyper: HyperPreset = HyperPreset()
    pcm: PCMPreset = PCMPreset()
    cache: CacheSettings = CacheSettings()
    compute: ComputeSettings = ComputeSettings()
    patch: PatchSettings = PatchSettings()
    server: ServerSettings = ServerSettings()
    limits: Limits = Limits()
    cluster: ClusterSettings = ClusterSettings()
    #: the user's block-weight presets (`lbw=NAME`), beside the LoRA Block Weight extension's
    lbw_presets: dict[str, list[float]] = Field(default_factory=dict)

    @field_validator("lbw_presets", mode="before")
    @classmethod
    def _lbw_presets(cls, value: object) -> object:
        """ "1,0,0.5,…" as the extension writes them; a length it takes; no default preset's
        name (`lbw=ALL` must mean the same everywhere)."""
        if not isinstance(value, dict):
            return value
        out = {}
        for name, vector in value.items():
            if name in PRESETS:
                raise ValueError(f"lbw preset {name!r} is a default preset's name; pick another")
            if isinstance(vector, str):
                vector = [part.strip() for part in vector.split(",")]
            if not isinstance(vector, list) or len(vector) not in FORMS:
                raise ValueError(
                    f"lbw preset {name!r} needs 17 or 26 values (SD1/SD2) or 12 or 20 (SDXL)"
                )
            out[name] = vector
        return out

    def fewstep(self, family: str) -> FewStepPreset:
        """The preset of a few-step family (`models.fewstep.PresetName`)."""
        return getattr(self, family)

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read `path`, writing the commented defaults there first when it does not exist."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(DEFAULT_CONFIG_TOML)
        with path.open("rb") as f:
            return cls.model_validate(tomllib.load(f))


DEFAULT_CONFIG_TOML = """\
# loraworks configuration. Delete a line to get its default back.

[generation]
steps = 25            # denoising steps when a request gives none
cfg = 7.5             # classifier-free guidance scale; <= 1 skips the unconditional pass
scheduler = "euler"   # euler | euler_a | dpmpp_2m | dpmpp_2m_karras | ddim | lcm | tcd
width = 0             # 0: the main model's native size (SD1 512, SD2-768 768, SDXL 1024,
height = 0            #    demo-shapes 64): the UNet's sample_size x the VAE's scale factor
lora_weight = 0.75    # weight of a LoRA picked without one and without a preferred weight

# Few-step presets, one per family of the LoRA in the stack (its record's `fewstep`), applied
# to the fields a request leaves unset. spacing: leading | trailing | linspace (euler, euler_a,
# ddim, dpm++ only; unset: the model's own). eta: TCD's gamma / DDIM's eta (0-1). steps: used
# when the file's name or metadata states no step count. lora_weight: the family's LoRA;
# other_lora_weight: every other LoRA. [family.by_steps.N]: changes for files made for N steps.
[lcm]                 # LCM-LoRA (latent consistency)
scheduler = "lcm"
steps = 4
cfg = 1.0
lora_weight = 0.35
other_lora_weight = 0.45

[tcd]                 # TCD-LoRA (trajectory consistency): more eta for more steps
scheduler = "tcd"
eta = 0.3
steps = 4
cfg = 1.0
lora_weight = 1.0
other_lora_weight = 0.75

[lightning]           # SDXL-Lightning: Euler from the last timestep, the file's 2/4/8 steps
scheduler = "euler"
spacing = "trailing"
steps = 4
cfg = 1.0
lora_weight = 1.0
other_lora_weight = 0.75

[hyper]               # Hyper-SD: DDIM trailing, the file's step count
scheduler = "ddim"
spacing = "trailing"
steps = 8
cfg = 1.0             # the CFG-preserving files (…-CFG-lora) want 5-8: set it per request
lora_weight = 1.0
other_lora_weight = 0.75

[hyper.by_steps.1]    # the 1-step unified LoRA samples with TCD at eta 1 (lower for more steps)
scheduler = "tcd"
eta = 1.0

[pcm]                 # PCM (phased consistency): DDIM trailing (normalcfg files want CFG 5-7)
scheduler = "ddim"
spacing = "trailing"
steps = 4
cfg = 1.0
lora_weight = 1.0
other_lora_weight = 0.75

[cache]
ram_budget_gb = 8.0   # main models kept loaded (LRU) while their size fits
max_loras = 32        # parsed LoRAs kept in memory
lora_gpu_gb = 1.0     # of those, the most recently used also kept on the GPU (the rest are
                      #   copied over when applied)
device_working_mem_gb = 3.0  # GPU memory kept free beside the models for generating: idle
                      #   models are evicted to keep it (InvokeAI's setting of the same name)

[compute]             # read when the first model loads; restart the server after a change
device = "auto"       # auto (a CUDA GPU when torch sees one, else CPU) | cpu | cuda | cuda:1 | mps
precision = "auto"    # auto (float16 on a GPU, float32 elsewhere) | float32 | float16 | bfloat16

[patch]               # where a patched weight's original waits while a LoRA stack is applied
strategy = "auto"     # auto: swap when the patched copies fit in memory, else in place |
                      #   swap: new tensors, originals kept (fastest; costs the patched size) |
                      #   inplace: written into the model's own memory; originals kept in host
                      #   memory (GPU; the file when short) or re-read from the model file (CPU)

[server]
host = "127.0.0.1"
port = 9090
# token = "..."       # required for a non-loopback bind; then sent as `Authorization: Bearer`

[limits]              # refusals name the setting to change; a CPU is happier with lower ones
max_side = 2048       # largest width or height a request may ask for (pixels)
max_batch = 8         # images per request
max_steps = 150       # denoising steps per image
max_queue = 100       # queued and running requests; more are refused with 429
max_request_bytes = 1048576  # largest request body the server reads (413 above)
max_install_gb = 20.0        # largest file, folder or download an install takes
install_timeout_s = 3600.0   # an install (path, folder or URL) that takes longer is abandoned
metadata_kept_kb = 256       # header metadata kept in a record; the largest values beyond this
                      #   stay in the file only (what the product reads is taken before)

[lbw_presets]         # your block-weight presets for <lora:name:1:lbw=NAME> (docs/generation.md):
                      #   17 values (SD1/SD2 LoRA), 26 (SD1/SD2 LyCORIS/full), 12 or 20 (SDXL)
# FACE = "1,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0"

[cluster]             # `loraworks serve --cluster` only (docs/cluster.md)
max_ongoing_requests = 7  # jobs a replica holds at once; a job for a stack whose replica holds
                      #   this many goes to another (spill-over). The head keeps (this+1)/2 per
                      #   replica sent, so a job can wait where its stack is patched. Of the jobs
                      #   waiting in a replica, those with its patched stack go first, none passed
                      #   over more than this many times
ready_timeout_s = 300.0   # a job waits this long for a replica to be ready, then fails
batch_window_ms = 0       # > 0: jobs with one stack, size and step settings that reach a replica
                      #   within this window (or wait there together) run as one UNet batch
"""
