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

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures.models import Components, build_components
from tests.lora_parity.inputs import Outputs, forward_all
from tests.lora_parity.sgm import sdxl_sgm_name

SEED = 0
WEIGHTS = (0.5, 1.0, -1.0)
Weight = float | Mapping[str, float]


@dataclass
class Produced:
    """A LoRA as its producer wrote it, and the producer's own forward at a weight."""

    kind: str
    base: str
    source: Path
    reference: Callable[[Weight], Outputs]
    weights: tuple[float, ...] = WEIGHTS
    targets: tuple[str, ...] = ("unet", "text_encoder")
    notes: dict = field(default_factory=dict)


@cache
def _pristine(base: str) -> Components:
    return build_components(base, "tiny", SEED)


def fresh(base: str) -> Components:
    """The unpatched model every engine run and every producer starts from (a copy: building
    and initialising a model costs far more than copying one)."""
    return copy.deepcopy(_pristine(base))


def component_weight(weight: Weight, component: str) -> float:
    """A float applies to every component; a dict names components, the rest get 0."""
    if isinstance(weight, Mapping):
        return float(weight.get(component, 0.0))
    return float(weight)


class _TextModelRoot(torch.nn.Module):
    """Puts a `text_model.` level above a CLIPTextModel that lacks it (transformers ≥5.16),
    so module paths read like the ones in real kohya/LyCORIS files."""

    def __init__(self, text_model: torch.nn.Module):
        super().__init__()
        self.text_model = text_model


def kohya_root(te: torch.nn.Module) -> torch.nn.Module:
    return te if hasattr(te, "text_model") else _TextModelRoot(te)


KOHYA_TE_PREFIX = {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
KOHYA_SDXL_TE_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def kohya_prefixes(base: str) -> dict[str, str]:
    te = KOHYA_SDXL_TE_PREFIX if base == "sdxl" else KOHYA_TE_PREFIX
    return {"unet": "lora_unet", **te}


def kohya_unet_path(base: str, diffusers_path: str) -> str:
    """The UNet module path a kohya file names: diffusers names for SD1/SD2, sgm for SDXL."""
    return sdxl_sgm_name(diffusers_path) if base == "sdxl" else diffusers_path


def kohya_name(base: str, component: str, path: str) -> str:
    """Flattened kohya layer name for a module path relative to the kohya root."""
    return f"{kohya_prefixes(base)[component]}_{path.replace('.', '_')}"


def save_safetensors(path: Path, sd: Mapping[str, torch.Tensor], metadata: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata)
    return path


# --- LyCORIS ---------------------------------------------------------------------------------

UNET_BLOCKS = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
TE_BLOCKS = ["CLIPAttention", "CLIPMLP"]
# Only the second level and the middle of the UNet: every module type is there (attention,
# resnets with shortcut and time projection, down- and upsampler) at a fraction of the
# cost of wrapping all of them (LyCORIS rebuilds every delta in every forward).
UNET_SKIP = [r"(down|up)_blocks\.[023]\b"]

# kind -> LycorisNetwork kwargs, plus optional "unet"/"te" (target block classes) and "conv"
LYCORIS_KINDS: dict[str, dict] = {
    "lora": dict(network_module="lora", unet=["Transformer2DModel"], conv=False),
    "locon": dict(network_module="locon"),
    "locon_tucker": dict(network_module="locon", use_tucker=True),
    "loha": dict(network_module="loha"),
    "loha_tucker": dict(network_module="loha", use_tucker=True),
    "lokr": dict(network_module="lokr", lora_dim=2),
    "lokr_decompose_both": dict(network_module="lokr", lora_dim=2, decompose_both=True, factor=8),
    "lokr_tucker": dict(network_module="lokr", lora_dim=2, use_tucker=True, factor=8),
    "lokr_full_matrix": dict(network_module="lokr", full_matrix=True),
    "lokr_large_factor": dict(network_module="lokr", lora_dim=2, factor=16),
    "ia3": dict(network_module="ia3"),
    "ia3_on_input": dict(network_module="ia3", train_on_input=True),
    "full": dict(network_module="full"),
    "dora": dict(network_module="lora", weight_decompose=True, wd_on_out=True),
    "dora_on_input": dict(network_module="lora", weight_decompose=True, wd_on_out=False),
    # LyCORIS trains norms next to another algo; the TE block is the layer, so that its
    # LayerNorms are in (the attention and MLP linears come with it)
    "norm": dict(network_module="lora", train_norm=True, te=["CLIPEncoderLayer"]),
}

_STD = {"loha": 0.3, "ia3": 0.3, "full": 0.02, "lokr": 0.1}


@torch.no_grad()
def randomise_lycoris(net: torch.nn.Module, algo: str, gen: torch.Generator) -> None:
    """Draw every adapter parameter; DoRA magnitudes are perturbed around their start value."""
    std = _STD.get(algo, 0.1)
    for name, p in net.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("dora_scale"):
            p.mul_(1 + 0.1 * noise)
        else:
            p.copy_(noise * std)


def _lycoris_network(root: torch.nn.Module, prefix: str, spec: dict, blocks: list[str]):
    from lycoris.wrapper import LycorisNetwork

    LycorisNetwork.apply_preset(
        {
            "enable_conv": spec.get("conv", True),
            "target_module": blocks,
            "target_name": [],
            "module_algo_map": {},
            "name_algo_map": {},
            "lora_prefix": prefix,
            "use_fnmatch": False,
            "exclude_name": UNET_SKIP,
        }
    )
    kwargs = {k: v for k, v in spec.items() if k not in ("unet", "te", "conv")}
    kwargs.setdefault("lora_dim", 4)
    kwargs.setdefault("conv_lora_dim", kwargs["lora_dim"])
    return LycorisNetwork(root, multiplier=1.0, alpha=2, conv_alpha=2, **kwargs)


def lycoris_networks(base: str, kind: str, seed: int = 1, comps: Components | None = None):
    """LyCORIS networks, one per component, with random weights, wrapping `comps` (fresh
    components unless given)."""
    spec = LYCORIS_KINDS[kind]
    comps = comps or fresh(base)
    gen = torch.Generator().manual_seed(seed)
    nets = {}
    for component, module in comps.as_mapping().items():
        if component == "unet":
            root, blocks = module, spec.get("unet", UNET_BLOCKS)
        else:
            root, blocks = kohya_root(module), spec.get("te", TE_BLOCKS)
        net = _lycoris_network(root, kohya_prefixes(base)[component], spec, blocks)
        assert net.loras, f"LyCORIS {kind} found no module in {component}"
        net.apply_to()  # registers the modules, so that parameters() sees them
        randomise_lycoris(net, spec["network_module"], gen)
        nets[component] = net
    return comps, nets


def lycoris_state_dict(base: str, nets: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """What `save_weights` writes, with SDXL UNet names turned into kohya's sgm names."""
    sd: dict[str, torch.Tensor] = {}
    for component, net in nets.items():
        for key, value in net.state_dict().items():
            if base == "sdxl" and component == "unet":
                key = _sgm_key(key)
            sd[key] = value.detach().clone()
    return sd


def _sgm_key(key: str) -> str:
    """`lora_unet_<diffusers flat>.<param>` → `lora_unet_<sgm flat>.<param>`."""
    layer, param = key.split(".", 1)
    return f"{lora_layer_sgm(layer)}.{param}"


_SDXL_FLAT_TO_PATH: dict[str, str] = {}


def lora_layer_sgm(layer: str) -> str:
    """Flat `lora_unet_down_blocks_1_...` → flat sgm name, through the real module path."""
    if not _SDXL_FLAT_TO_PATH:
        unet = fresh("sdxl").unet
        for path, _ in unet.named_modules():
            if path:
                _SDXL_FLAT_TO_PATH["lora_unet_" + path.replace(".", "_")] = path
    return "lora_unet_" + sdxl_sgm_name(_SDXL_FLAT_TO_PATH[layer]).replace(".", "_")


def _set_multipliers(nets: Mapping[str, torch.nn.Module], weight: Weight) -> None:
    for component, net in nets.items():
        net.set_multiplier(component_weight(weight, component))


def lycoris_file(base: str, kind: str, folder: Path) -> Produced:
    comps, nets = lycoris_networks(base, kind)
    metadata = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_args": json.dumps({"algo": LYCORIS_KINDS[kind]["network_module"]}),
    }
    sd = lycoris_state_dict(base, nets)
    if kind == "lokr_full_matrix":
        # LyCORIS ignores alpha when both Kronecker factors are full (its loader resets it to
        # the dim, lokr.py); older files carry other values: one here, so that using it fails
        sd.update({k: torch.tensor(1.0) for k in sd if k.endswith(".alpha")})
    path = save_safetensors(folder / f"lycoris_{kind}_{base}.safetensors", sd, metadata)

    def reference(weight: Weight) -> Outputs:
        _set_multipliers(nets, weight)
        return forward_all(comps.as_mapping())

    return Produced(kind, base, path, reference, targets=tuple(nets))


def lycoris_stack(base: str, kinds: Mapping[str, Weight], folder: Path):
    """Several LyCORIS networks on one model. LyCORIS chains the wrappers and each reads the
    original weight, so the reference is W + Σ mᵢ·ΔWᵢ (additive kinds only)."""
    comps = fresh(base)
    files = []
    for i, (kind, weight) in enumerate(kinds.items()):
        _, nets = lycoris_networks(base, kind, seed=10 + i, comps=comps)
        _set_multipliers(nets, weight)
        path = save_safetensors(
            folder / f"stack_{kind}_{base}.safetensors", lycoris_state_dict(base, nets), {}
        )
        files.append((path, weight))

    def reference() -> Outputs:
        return forward_all(comps.as_mapping())

    return files, reference


# --- PEFT and diffusers ----------------------------------------------------------------------

# Same part of the UNet as for LyCORIS; attention, a 1x1/linear projection and a 3x3 conv.
PEFT_UNET_TARGETS = (
    r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*"
    r"\.(to_q|to_k|to_v|to_out\.0|proj_in|ff\.net\.2|conv1)$"
)
PEFT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def peft_config(kind: str, targets):
    """PEFT configs with alpha ≠ r, so that a loader that ignores alpha fails."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    if kind == "ia3":
        ff = r".*\.ff\.net\.2$" if isinstance(targets, str) else ["fc2"]
        return IA3Config(target_modules=targets, feedforward_modules=ff)
    if kind == "loha":
        return LoHaConfig(r=4, alpha=2, target_modules=targets)
    if kind == "lokr":
        return LoKrConfig(r=4, alpha=2, target_modules=targets)
    extra = {"dora": dict(use_dora=True), "rslora": dict(use_rslora=True)}.get(kind, {})
    return LoraConfig(r=4, lora_alpha=2, target_modules=targets, **extra)


PEFT_KINDS = ("lora", "dora", "rslora", "loha", "lokr", "ia3")


@torch.no_grad()
def randomise_peft(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Draw every adapter parameter; magnitudes and IA3 scales stay near their start value."""
    for name, p in model.named_parameters():
        if not p.requires_grad:  # base weights are frozen by PEFT
            continue
        noise = torch.randn(p.shape, generator=gen)
        if "lora_magnitude_vector" in name:
            p.mul_(1 + 0.1 * noise)
        elif "ia3_l" in name:
            p.copy_(1 + 0.3 * noise)
        else:
            p.copy_(noise * (0.2 if "hada_" in name else 0.05))


def peft_set_weight(models, weight: Weight) -> None:
    """diffusers' `set_adapters` weights: `set_scale(adapter, m)` on every tuner layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component, model in models.items():
        m = component_weight(weight, component)
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer) and hasattr(layer, "set_scale"):
                for adapter in layer.active_adapters:
                    layer.set_scale(adapter, m)


def peft_folder(base: str, kind: str, folder: Path) -> Produced:
    """A PEFT folder (adapter_model.safetensors + adapter_config.json) for the UNet."""
    from peft import get_peft_model

    comps = fresh(base)
    model = get_peft_model(comps.unet, peft_config(kind, PEFT_UNET_TARGETS))
    randomise_peft(model, torch.Generator().manual_seed(2))
    out = folder / f"peft_{kind}_{base}"
    model.save_pretrained(str(out))

    def reference(weight: Weight) -> Outputs:
        peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    weights = (1.0,) if kind == "ia3" else WEIGHTS
    return Produced(f"peft_{kind}", base, out, reference, weights, targets=("unet",))


def diffusers_files(base: str, kind: str, folder: Path) -> list[Produced]:
    """PEFT adapters on every component, saved by the pipeline's `save_lora_weights` with
    adapter metadata, once in the training scripts' `lora.down` keys and once in raw PEFT
    keys. Text-encoder paths are what this transformers gives (no `text_model.`)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    models = comps.as_mapping()
    gen = torch.Generator().manual_seed(3)
    layers, meta = {}, {}
    for component, model in models.items():
        targets = PEFT_UNET_TARGETS if component == "unet" else PEFT_TE_TARGETS
        config = peft_config(kind, targets)
        model.add_adapter(config)
        randomise_peft(model, gen)
        layers[component] = get_peft_model_state_dict(model)
        meta[component] = config.to_dict()
    pipeline = StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline

    def reference(weight: Weight) -> Outputs:
        peft_set_weight(models, weight)
        return forward_all(models)

    produced = []
    for style, convert in (("diffusers", convert_state_dict_to_diffusers), ("peft_keys", dict)):
        out = folder / f"diffusers_{kind}_{style}_{base}"
        pipeline.save_lora_weights(
            str(out),
            **{f"{c}_lora_layers": convert(sd) for c, sd in layers.items()},
            **{f"{c}_lora_adapter_metadata": md for c, md in meta.items()},
        )
        source = out / "pytorch_lora_weights.safetensors"
        produced.append(Produced(f"diffusers_{kind}_{style}", base, source, reference))
    return produced


def lcm_lora_file(base: str, folder: Path) -> Produced:
    """An LCM-LoRA as the LCM training script wrote it: PEFT LoRA on the UNet, keys renamed
    `base_model.model`→`lora_unet`, `lora_A/B`→`lora_down/up`, all but the last two dots →
    `_`, plus `.alpha` = lora_alpha (diffusers `train_lcm_distill_lora_*`)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    targets = (
        r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*\.(to_q|to_k|to_v|to_out\.0|proj_in|"
        r"proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2|conv_shortcut|"
        r"downsamplers\.0\.conv|upsamplers\.0\.conv|time_emb_proj)$"
    )
    config = LoraConfig(r=8, lora_alpha=2, target_modules=targets)
    model = get_peft_model(comps.unet, config)
    randomise_peft(model, torch.Generator().manual_seed(4))
    sd = {}
    for key, value in get_peft_model_state_dict(model).items():
        key = key.replace("base_model.model", "lora_unet")
        key = key.replace("lora_A", "lora_down").replace("lora_B", "lora_up")
        key = key.replace(".", "_", key.count(".") - 2)
        sd[key] = value
        if "lora_down" in key:
            sd[f"{key.split('.')[0]}.alpha"] = torch.tensor(float(config.lora_alpha))
    path = save_safetensors(folder / f"lcm_lora_{base}.safetensors", sd, {})

    def reference(weight: Weight) -> Outputs:
        peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    return Produced("lcm_lora", base, path, reference, targets=("unet",))


# --- kohya layout by hand --------------------------------------------------------------------

_LEVELS = r"(down_blocks\.1|mid_block|up_blocks\.1)\..*"
HAND_TARGETS = {
    "kohya_lora": _LEVELS + r"\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out)",
    "kohya_locon": _LEVELS
    + r"\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2"
    r"|conv_shortcut|time_emb_proj|downsamplers\.0\.conv|upsamplers\.0\.conv)",
}
HAND_TE_TARGETS = r".*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


@dataclass
class HandLayer:
    component: str
    path: str  # relative to the kohya root (TE paths start with `text_model.`)
    delta: torch.Tensor  # (α/r)·up@down in the weight's shape


def _roots(comps: Components) -> dict[str, torch.nn.Module]:
    return {c: (m if c == "unet" else kohya_root(m)) for c, m in comps.as_mapping().items()}


def hand_kohya(base: str, kind: str, seed: int = 5) -> tuple[dict, list[HandLayer]]:
    """kohya `lora_down`/`lora_up`/`alpha` tensors for every targeted Linear/Conv2d: rank 4,
    alpha 2 (network_alpha) and alpha 1 on 3x3 convs (conv_alpha), as kohya writes them.
    (diffusers misreads alphas that vary from layer to layer, so they are kept per kind.)"""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    layers: list[HandLayer] = []
    for component, root in _roots(fresh(base)).items():
        pattern = HAND_TARGETS[kind] if component == "unet" else HAND_TE_TARGETS
        for path, module in root.named_modules():
            if not re.fullmatch(pattern, path):
                continue
            w = module.weight
            rank, alpha = 4, (1.0 if w.dim() == 4 and w.shape[-1] == 3 else 2.0)
            down = 0.1 * torch.randn(rank, *w.shape[1:], generator=gen)
            up = 0.1 * torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=gen)
            key_path = kohya_unet_path(base, path) if component == "unet" else path
            name = kohya_name(base, component, key_path)
            sd[f"{name}.lora_down.weight"] = down
            sd[f"{name}.lora_up.weight"] = up
            sd[f"{name}.alpha"] = torch.tensor(alpha)
            delta = (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            layers.append(HandLayer(component, path, delta))
    return sd, layers


def hand_formula_reference(base: str, layers: list[HandLayer]) -> Callable[[Weight], Outputs]:
    """W + m·(α/r)·up@down on a fresh model: the kohya formula, computed here."""

    def reference(weight: Weight) -> Outputs:
        comps = fresh(base)
        roots = _roots(comps)
        with torch.no_grad():
            for layer in layers:
                m = component_weight(weight, layer.component)
                roots[layer.component].get_submodule(layer.path).weight.add_(m * layer.delta)
        return forward_all(comps.as_mapping())

    return reference


def diffusers_reference(base: str, path: Path, folder: Path) -> Callable[[Weight], Outputs]:
    """diffusers `load_lora_weights`, per-component weights through `set_adapters`, then
    `fuse_lora` (which merges at the scale `set_adapters` set)."""
    from tests.fixtures.models import build_pipeline

    pipe = build_pipeline(base, folder / f"pipe_{path.stem}", "tiny", SEED)
    pipe.load_lora_weights(str(path), adapter_name="x")
    models = {c: getattr(pipe, c, None) for c in ("unet", "text_encoder", "text_encoder_2")}
    models = {c: m for c, m in models.items() if m is not None}

    def reference(weight: Weight) -> Outputs:
        pipe.set_adapters(["x"], [{c: component_weight(weight, c) for c in models}])
        pipe.fuse_lora(components=list(models), lora_scale=1.0, adapter_names=["x"])
        out = forward_all(models)
        pipe.unfuse_lora(components=list(models))
        return out

    return reference


def kohya_hand_path(base: str, kind: str, folder: Path) -> tuple[Path, list[HandLayer]]:
    """Write a hand-made kohya file (SDXL with sgm names and `ss_base_model_version`)."""
    sd, layers = hand_kohya(base, kind)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "4"}
    if base == "sdxl":
        metadata["ss_base_model_version"] = "sdxl_base_v1-0"
    return save_safetensors(folder / f"{kind}_{base}.safetensors", sd, metadata), layers


def kohya_hand_file(base: str, kind: str, folder: Path) -> Produced:
    path, layers = kohya_hand_path(base, kind, folder)
    components = tuple(dict.fromkeys(layer.component for layer in layers))
    produced = Produced(
        kind, base, path, diffusers_reference(base, path, folder), targets=components
    )
    produced.notes["hand_reference"] = hand_formula_reference(base, layers)
    return produced


_ATTN_PROCS = {
    "to_q": "to_q_lora",
    "to_k": "to_k_lora",
    "to_v": "to_v_lora",
    "to_out.0": "to_out_lora",
}


def attn_procs_file(base: str, folder: Path) -> Produced:
    """The first diffusers LoRA generation (2023 `save_attn_procs`): UNet attention only, keys
    `<attention>.processor.to_q_lora.down.weight` without a component prefix, no alpha
    (scale 1). Weights come from a PEFT LoRA with lora_alpha = r, whose forward is the
    reference."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    targets = r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*\.(to_q|to_k|to_v|to_out\.0)$"
    model = get_peft_model(comps.unet, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    randomise_peft(model, torch.Generator().manual_seed(6))
    sd = {}
    for key, value in get_peft_model_state_dict(model).items():
        path, factor = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        attention, projection = re.fullmatch(
            r"(.*\.attn\d)\.(to_q|to_k|to_v|to_out\.0)", path
        ).groups()
        updown = {"A.weight": "down", "B.weight": "up"}[factor]
        sd[f"{attention}.processor.{_ATTN_PROCS[projection]}.{updown}.weight"] = value
    path = save_safetensors(folder / f"attn_procs_{base}.safetensors", sd, {})

    def reference(weight: Weight) -> Outputs:
        peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    return Produced("attn_procs", base, path, reference, targets=("unet",))
