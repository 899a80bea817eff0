"""Hostile and broken LoRA files, made by mutating a valid kohya SD1 file (or written from
scratch), for the fuzz tests and `bench/fuzz_loras.py`.

A `HostileCase` is (mutation, seed): deterministic, so a failing case can be replayed by name.
Each mutation also says by which stage it must be refused: `load` (the file itself is bad),
`apply` (a readable file that does not fit the model) or `any` (it may be fine, e.g. a bit
flip inside tensor data; then it must load and patch cleanly).
"""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save

from tests.models.lora_files import kohya_sd1_tensors, kohya_sdxl_tensors

Stage = Literal["load", "apply", "any"]
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Written:
    """A hostile file on disk; `marker` is the file a pickle payload would create."""

    path: Path
    marker: Path | None = None
    layer: str | None = None  # the kohya layer name a NaN/Inf refusal must name


@dataclass(frozen=True)
class Made:
    content: bytes
    suffix: str = ".safetensors"
    layer: str | None = None


class Payload:
    """Unpickling this calls `open(marker, "w")`: it would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- helpers -----------------------------------------------------------------------------


def valid_tensors(rng: random.Random) -> Tensors:
    return kohya_sd1_tensors(seed=rng.randrange(1000))


def _split(content: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8 : 8 + n]), content[8 + n :]


def _join(header: dict | str | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else str(header).encode()
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _valid_bytes(rng: random.Random) -> bytes:
    return save(valid_tensors(rng), metadata={"ss_network_dim": "4"})


def _pick_layer(rng: random.Random, tensors: Tensors) -> str:
    return rng.choice(sorted({k.split(".", 1)[0] for k in tensors}))


# --- mutations: (rng, marker path) -> Made --------------------------------------------------


def empty(rng, marker) -> Made:
    return Made(b"")


def few_bytes(rng, marker) -> Made:
    return Made(rng.randbytes(rng.randint(1, 7)))


def truncated(rng, marker) -> Made:
    data = _valid_bytes(rng)
    return Made(data[: rng.randint(1, len(data) - 1)])


def header_longer_than_file(rng, marker) -> Made:
    data = _valid_bytes(rng)
    claim = len(data) - 8 + rng.choice([1, 2, 1000, 2**31])
    return Made(struct.pack("<Q", claim) + data[8:])


def header_claims_10gb(rng, marker) -> Made:
    return Made(struct.pack("<Q", 10 * 2**30 + rng.randrange(1000)) + b'{"a":' + b" " * 64)


def header_garbage(rng, marker) -> Made:
    header, data = _split(_valid_bytes(rng))
    n = len(json.dumps(header))
    return Made(_join(rng.randbytes(n), data))


def header_json_edits(rng, marker) -> Made:
    header, data = _split(_valid_bytes(rng))
    text = list(json.dumps(header))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(text))
        if rng.random() < 0.5:
            del text[i]
        else:
            text[i] = rng.choice('{}[]":,0123456789-eE. aZ\\')
    return Made(_join("".join(text), data))


_DTYPES = ["F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "C64", "X"]


def dtype_swapped(rng, marker) -> Made:
    header, data = _split(_valid_bytes(rng))
    key = rng.choice([k for k in header if k != "__metadata__"])
    header[key]["dtype"] = rng.choice(_DTYPES)
    return Made(_join(header, data))


def header_shape_or_offsets(rng, marker) -> Made:
    header, data = _split(_valid_bytes(rng))
    key = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["shape", "data_offsets"])
    value = header[key][field]
    choices = [[], [-1], [2**62, 2**62], [0, 0], "x", None, {"a": 1}, [*value, 3], value[::-1]]
    header[key][field] = rng.choice([c for c in choices if c != value])
    return Made(_join(header, data))


def integer_tensors(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    key = rng.choice(sorted(tensors))
    dtype = rng.choice([torch.int64, torch.int8, torch.uint8, torch.bool, torch.int32])
    tensors[key] = (tensors[key] * 100).to(dtype)
    return Made(save(tensors))


def misfit_shapes(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    key = rng.choice(sorted(k for k in tensors if not k.endswith("alpha")))
    shape = [rng.choice([1, 3, 5, 7, 33, 769]) for _ in range(rng.choice([1, 2, 2, 3, 4]))]
    while torch.Size(shape).numel() > 2**20:  # misfit, not huge (sizes have their own test)
        shape[shape.index(max(shape))] = 2
    tensors[key] = torch.randn(*shape) * 0.01
    return Made(save(tensors))


def nan_or_inf(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    key = rng.choice(sorted(k for k in tensors if not k.endswith("alpha")))
    flat = tensors[key].reshape(-1).clone()
    flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
    tensors[key] = flat.reshape(tensors[key].shape).to(rng.choice([torch.float32, torch.float16]))
    return Made(save(tensors), layer=key.split(".", 1)[0])


def rank_zero(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    layer = _pick_layer(rng, tensors)
    down, up = tensors[f"{layer}.lora_down.weight"], tensors[f"{layer}.lora_up.weight"]
    tensors[f"{layer}.lora_down.weight"] = torch.zeros(0, down.shape[1])
    tensors[f"{layer}.lora_up.weight"] = torch.zeros(up.shape[0], 0)
    return Made(save(tensors))


def missing_half(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    layer = _pick_layer(rng, tensors)
    del tensors[f"{layer}.{rng.choice(['lora_up', 'lora_down'])}.weight"]
    return Made(save(tensors))


def huge_alpha(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    layer = _pick_layer(rng, tensors)
    alpha = rng.choice([1e30, 3e38, -3e38, float("inf"), float("nan"), 1e6])
    tensors[f"{layer}.alpha"] = torch.tensor(alpha)
    return Made(save(tensors), layer=layer)


def wrong_base(rng, marker) -> Made:
    return Made(save(kohya_sdxl_tensors(seed=rng.randrange(1000))))


def traversal_and_nul_keys(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    bad = rng.choice(["../../etc/passwd", "a\x00b", "..", "lora_unet_../../x", "lora_te_\x00"])
    tensors[f"{bad}.lora_down.weight"] = torch.zeros(4, 8)
    tensors[f"{bad}.lora_up.weight"] = torch.zeros(8, 4)
    return Made(save(tensors))


def pickle_payload(rng, marker) -> Made:
    buf = io.BytesIO()
    obj = dict(valid_tensors(rng))
    obj[rng.choice(["x", "state_dict", "lora_unet_a.alpha"])] = Payload(str(marker))
    torch.save(obj, buf)
    return Made(buf.getvalue(), suffix=rng.choice([".ckpt", ".pt", ".bin", ".pth"]))


def metadata_garbage(rng, marker) -> Made:
    header, data = _split(_valid_bytes(rng))
    header["__metadata__"] = rng.choice(
        [[1, 2], "text", {"ss_tag_frequency": "{not json"}, {"a": {"b": [1]}}, 7, {"x": None}]
    )
    return Made(_join(header, data))


def unknown_keys(rng, marker) -> Made:
    names = ["model.diffusion_model.x", "foo.bar", "lora_unet_x.hada_w9", "w", "lora_te_y.oft_r"]
    return Made(save({rng.choice(names): torch.randn(4, 4)}))


def no_tensors(rng, marker) -> Made:
    return Made(save({}, metadata={"ss_network_dim": "4"}))


def data_bit_flips(rng, marker) -> Made:
    data = bytearray(_valid_bytes(rng))
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(8 + n, len(data))
        data[i] ^= 1 << rng.randrange(8)
    return Made(bytes(data))


def odd_layer_kinds(rng, marker) -> Made:
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    kinds = [
        {"hada_w1_a": torch.randn(32, 2), "hada_w1_b": torch.randn(3, 768)},
        {"lokr_w1": torch.randn(5, 7), "lokr_w2": torch.randn(3, 3)},
        {"lora_down.weight": torch.randn(4, 768), "lora_mid.weight": torch.randn(2)},
        {"weight": torch.randn(31)},
        {"diff": torch.randn(3, 3)},
        {"dora_scale": torch.randn(32, 1), "diff": torch.randn(32, 768)},
        {"lora_down.weight": torch.randn(4, 768), "lora_up.weight": torch.randn(32, 4, 2, 2)},
        {"bias_indices": torch.zeros(1, 1, dtype=torch.int64)},
    ]
    tensors = {f"{layer}.{k}": v for k, v in rng.choice(kinds).items()}
    return Made(save(tensors))


def scalar_and_empty_tensors(rng, marker) -> Made:
    tensors = valid_tensors(rng)
    key = rng.choice(sorted(tensors))
    tensors[key] = rng.choice([torch.tensor(1.0), torch.zeros(0), torch.zeros(4, 0, 3)])
    return Made(save(tensors))


Mutation = Callable[[random.Random, Path], Made]
MUTATIONS: dict[str, tuple[Mutation, Stage]] = {
    "empty": (empty, "load"),
    "few_bytes": (few_bytes, "load"),
    "truncated": (truncated, "load"),
    "header_longer_than_file": (header_longer_than_file, "load"),
    "header_claims_10gb": (header_claims_10gb, "load"),
    "header_garbage": (header_garbage, "load"),
    "header_json_edits": (header_json_edits, "any"),
    "dtype_swapped": (dtype_swapped, "any"),
    "header_shape_or_offsets": (header_shape_or_offsets, "load"),
    "integer_tensors": (integer_tensors, "any"),
    "misfit_shapes": (misfit_shapes, "apply"),
    "nan_or_inf": (nan_or_inf, "load"),
    "rank_zero": (rank_zero, "load"),
    "missing_half": (missing_half, "load"),
    "huge_alpha": (huge_alpha, "any"),
    "wrong_base": (wrong_base, "apply"),
    "traversal_and_nul_keys": (traversal_and_nul_keys, "any"),
    "pickle_payload": (pickle_payload, "load"),
    "metadata_garbage": (metadata_garbage, "any"),
    "unknown_keys": (unknown_keys, "load"),
    "no_tensors": (no_tensors, "load"),
    "data_bit_flips": (data_bit_flips, "any"),
    "odd_layer_kinds": (odd_layer_kinds, "apply"),
    "scalar_and_empty_tensors": (scalar_and_empty_tensors, "any"),
}


@dataclass(frozen=True)
class HostileCase:
    mutation: str
    seed: int

    @property
    def stage(self) -> Stage:
        return MUTATIONS[self.mutation][1]

    @property
    def label(self) -> str:
        return f"{self.mutation}#{self.seed}"

    def write(self, folder: Path) -> Written:
        """Write the file as `<mutation>-<seed><suffix>` in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"pwned-{self.mutation}-{self.seed}"
        made = MUTATIONS[self.mutation][0](random.Random(f"{self.mutation}/{self.seed}"), marker)
        path = folder / f"{self.mutation}-{self.seed}{made.suffix}"
        path.write_bytes(made.content)
        return Written(path, marker if self.mutation == "pickle_payload" else None, made.layer)


def all_cases(count: int, start: int = 0) -> list[HostileCase]:
    """`count` cases cycling through every mutation (seeds `start`…)."""
    names = sorted(MUTATIONS)
    return [HostileCase(names[i % len(names)], start + i // len(names)) for i in range(count)]
