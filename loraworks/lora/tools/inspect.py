"""`inspect`: what a LoRA holds, as a person or a script wants to read it.

Per layer: kind, rank, alpha, scale, ΔW shape; per block (a UNet level — ``down_blocks.N``,
``mid_block``, ``up_blocks.N`` — or a text encoder) the ranks and alphas seen; the targets'
module types (attention, feed-forward, conv…). Hashes of a file, as the sites that key LoRAs by
them compute them: sha256 of the whole file (A1111's AutoV2 is its first 10 hex digits) and,
for ``.safetensors``, of the bytes after the header (AutoV3, kohya's ``sshs_model_hash``,
unchanged by metadata edits). The training summary is the ``ss_*``/``modelspec.*`` entries a
trainer leaves (tag frequencies and bucket lists left out: they are long).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..model import LoRA

#: metadata that is long lists, not a summary
_LONG = ("ss_tag_frequency", "ss_bucket_info", "ss_dataset_dirs", "ss_datasets", "ss_bucket_")
_BLOCK = re.compile(r"^(unet\.(?:down_blocks\.\d+|up_blocks\.\d+|mid_block|[a-z_]+))")


@dataclass
class LayerFacts:
    target: str
    kind: str
    rank: int | None
    alpha: float | None
    scale: float | None
    shape: list[int] | None


@dataclass
class BlockFacts:
    layers: int = 0
    ranks: list[int] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)


@dataclass
class Inspection:
    name: str | None
    source: str | None
    format: str
    base: str
    compatible_bases: list[str]
    unet_names: str | None
    kinds: dict[str, int]
    components: list[str]
    targets: dict[str, int]
    blocks: dict[str, BlockFacts]
    layers: list[LayerFacts]
    hashes: dict[str, str]
    training: dict[str, str]
    warnings: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def block_of(target: str) -> str:
    m = _BLOCK.match(target)
    return m.group(1) if m else target.split(".", 1)[0]


def module_type(target: str) -> str:
    last = target.rsplit(".", 2)
    name = ".".join(last[-2:]) if last[-1].isdigit() else last[-1]
    if name in ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj"):
        return "attention"
    if name in ("ff.net.0.proj", "net.0.proj", "net.2", "fc1", "fc2") or ".ff." in target:
        return "feed-forward"
    if name in ("proj_in", "proj_out"):
        return "projection"
    if "norm" in name:
        return "norm"
    return "other"


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of the whole file, AutoV2, and for safetensors AutoV3 (bytes after the header)."""
    whole, after = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as f:
        head = f.read(8)
        whole.update(head)
        n = int.from_bytes(head, "little") if path.suffix == ".safetensors" else None
        if n is not None:
            header = f.read(n)
            whole.update(header)
        while chunk := f.read(1 << 20):
            whole.update(chunk)
            after.update(chunk)
    out = {"sha256": whole.hexdigest(), "autov2": whole.hexdigest()[:10]}
    if n is not None:
        out["autov3"] = after.hexdigest()[:12]
        out["sshs_model_hash"] = after.hexdigest()
    return out


def inspect_lora(lora: LoRA) -> Inspection:
    layers, blocks, targets = [], {}, {}
    for target, layer in lora.layers.items():
        rank = getattr(layer, "rank", None)
        alpha = getattr(layer, "alpha", None)
        scale = getattr(layer, "scale", None)
        shape = layer.delta_shape()
        layers.append(
            LayerFacts(
                target,
                layer.kind,
                rank,
                None if alpha is None else float(alpha),
                None if scale is None else float(scale),
                None if shape is None else [int(d) for d in shape],
            )
        )
        b = blocks.setdefault(block_of(target), BlockFacts())
        b.layers += 1
        if rank is not None and rank not in b.ranks:
            b.ranks.append(rank)
        if alpha is not None and float(alpha) not in b.alphas:
            b.alphas.append(float(alpha))
        kind = module_type(target)
        targets[kind] = targets.get(kind, 0) + 1
    source = Path(lora.source) if lora.source else None
    hashes = file_hashes(source) if source is not None and source.is_file() else {}
    training = {
        k: v
        for k, v in lora.metadata.items()
        if k.startswith(("ss_", "modelspec.", "sshs_", "loraworks_")) and not k.startswith(_LONG)
    }
    return Inspection(
        name=lora.name,
        source=lora.source,
        format=lora.format,
        base=lora.base,
        compatible_bases=sorted(lora.compatible_bases),
        unet_names=lora.unet_names,
        kinds=lora.kinds,
        components=sorted(lora.components),
        targets=targets,
        blocks=blocks,
        layers=layers,
        hashes=hashes,
        training=training,
        warnings=list(lora.warnings),
    )
