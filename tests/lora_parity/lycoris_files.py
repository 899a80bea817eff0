"""LyCORIS 4.1.3 networks on the tiny models, saved as kohya-style files; the reference is
the network's own forward after `apply_to` (not `merge_to`, which scales LoHa/LoKr twice)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from tests.fixtures.models import Components
from tests.lora_parity.common import (
    Produced,
    Weight,
    component_weight,
    fresh,
    kohya_name,
    kohya_prefixes,
    kohya_root,
    kohya_unet_path,
    save_safetensors,
)
from tests.lora_parity.inputs import Outputs, forward_all

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
    "oft": dict(network_module="diag-oft"),
    # a constraint below the drawn blocks' norm (so the blocks are scaled down) and a rescale
    "oft_constrained_rescaled": dict(network_module="diag-oft", constraint=1e-3, rescaled=True),
    "boft": dict(network_module="boft", lora_dim=12),  # 12 = even block for 768 and 1280
    "boft_constrained_rescaled": dict(
        network_module="boft", lora_dim=12, constraint=1e-3, rescaled=True
    ),
    "glora": dict(network_module="glora"),
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


_PRESET_ATTRS = (
    "ENABLE_CONV",
    "TARGET_REPLACE_MODULE",
    "TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "LORA_PREFIX",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
)


def _lycoris_network(root: torch.nn.Module, prefix: str, spec: dict, blocks: list[str]):
    """A LycorisNetwork with our preset. Presets live on the class, so the class's own are put
    back afterwards: other tests that use LyCORIS must not inherit our prefix or exclusions."""
    from lycoris.wrapper import LycorisNetwork

    saved = {attr: getattr(LycorisNetwork, attr) for attr in _PRESET_ATTRS}
    preset = {
        "enable_conv": spec.get("conv", True),
        "target_module": blocks,
        "target_name": [],
        "module_algo_map": {},
        "name_algo_map": {},
        "lora_prefix": prefix,
        "use_fnmatch": False,
        "exclude_name": UNET_SKIP,
    }
    kwargs = {k: v for k, v in spec.items() if k not in ("unet", "te", "conv")}
    kwargs.setdefault("lora_dim", 4)
    kwargs.setdefault("conv_lora_dim", kwargs["lora_dim"])
    LycorisNetwork.apply_preset(preset)
    try:
        return LycorisNetwork(root, multiplier=1.0, alpha=2, conv_alpha=2, **kwargs)
    finally:
        for attr, value in saved.items():
            setattr(LycorisNetwork, attr, value)


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
    return kohya_name("sdxl", "unet", kohya_unet_path("sdxl", _SDXL_FLAT_TO_PATH[layer]))


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
