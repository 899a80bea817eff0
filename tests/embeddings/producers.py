"""Embedding files written in each producer's own layout (what their trainers save), so the
readers are tested against the files people download, not against our own writer:

* A1111 `textual_inversion.py` `Embedding.save`: ``torch.save`` of ``string_to_token``,
  ``string_to_param`` (``{"*": N×D}``, a trained tensor with ``requires_grad``), ``name``,
  ``step``, ``sd_checkpoint``, ``sd_checkpoint_name``.
* kohya `train_textual_inversion.py` `save_weights`: ``{"emb_params": N×D}`` (SD1/SD2) or
  ``{"clip_l": N×768, "clip_g": N×1280}`` (SDXL), ``save_file`` with the training metadata.
* diffusers `textual_inversion.py` `save_progress`: ``{placeholder_token: N×D}`` in
  ``learned_embeds.safetensors`` (``metadata={"format": "pt"}``) or ``torch.save`` to ``.bin``.
* kohya / A1111 bundles: ``bundle_emb.<name>.string_to_param.*`` (or ``.clip_l``/``.clip_g``)
  next to the LoRA's layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def write_a1111(path: Path, vectors: torch.Tensor, name: str = "zq", step: int = 3000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    param = vectors.clone().requires_grad_(True)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": param},
        "name": name,
        "step": step,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }
    torch.save(data, str(path))
    return path


def write_kohya(path: Path, vectors: dict[str, torch.Tensor] | torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = vectors if isinstance(vectors, dict) else {"emb_params": vectors}
    metadata = {"ss_output_name": path.stem, "ss_num_vectors_per_token": "2"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


def write_diffusers(path: Path, token: str, vectors: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({token: vectors.contiguous()}, str(path), metadata={"format": "pt"})
    else:
        torch.save({token: vectors}, str(path))
    return path


def add_bundle(lora: Path, name: str, vectors: dict[str, torch.Tensor]) -> Path:
    """`lora` with an embedding bundled under `name` (``{"string_to_param.*": …}`` or
    ``{"clip_l": …, "clip_g": …}``)."""
    tensors = load_file(str(lora))
    for key, tensor in vectors.items():
        tensors[f"bundle_emb.{name}.{key}"] = tensor.contiguous()
    save_file(tensors, str(lora), {"ss_network_dim": "2", "ss_network_alpha": "2"})
    return lora
