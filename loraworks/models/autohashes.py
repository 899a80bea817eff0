"""The short hashes A1111 and Civitai identify models by, kept in a record's `hashes`.

* `SHA256`: of the whole file (64 hex), for every single-file model.
* `AutoV2`: its first 10 hex digits, A1111's `Model hash` of a checkpoint or VAE.
* `AutoV3`: a LoRA's hash in A1111's `Lora hashes`: the SHA-256 of a safetensors file's bytes
  after its header (`addnet_hash_safetensors`, unchanged when only metadata is edited; of the
  whole file for other formats), first 12 hex digits.
* `sshs_model_hash`: the full after-header hash kohya's trainer stores in the file's metadata,
  which A1111 prefers to its own computation; kept only when it is 64 hex digits, so a hostile
  or damaged value never reaches a lookup.

A diffusers or PEFT folder is no file A1111 can load and has none of them (an infotext then
leaves `Model hash` out); a diffusers LoRA folder's weights file is one, and is hashed as such.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from loraworks.models.hashing import FileDigests

AUTOV2_DIGITS = 10
AUTOV3_DIGITS = 12
SSHS_KEY = "sshs_model_hash"
_FULL_SHA256 = re.compile(r"[0-9a-f]{64}")
#: the shortest hex prefix a foreign hash may be matched by (A1111's oldest model hash has 8)
MIN_MATCH_DIGITS = 8


def auto_hashes(
    kind: str, digests: FileDigests, metadata: Mapping[str, object], safetensors: bool
) -> dict[str, str]:
    """The record's `hashes` for a file of `kind` (main, vae, lora, embedding)."""
    if digests.sha256 is None:
        return {}
    hashes = {"SHA256": digests.sha256, "AutoV2": digests.sha256[:AUTOV2_DIGITS]}
    if kind == "lora":
        after = digests.after_header if safetensors else digests.sha256
        if after is not None:
            hashes["AutoV3"] = after[:AUTOV3_DIGITS]
        own = own_sshs_hash(metadata)
        if own is not None:
            hashes[SSHS_KEY] = own
    return hashes


def own_sshs_hash(metadata: Mapping[str, object]) -> str | None:
    """The file's `sshs_model_hash` when it is a SHA-256 (64 hex digits), else None."""
    value = metadata.get(SSHS_KEY)
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if _FULL_SHA256.fullmatch(value) else None


def hash_matches(hashes: Mapping[str, str], foreign: str) -> bool:
    """Whether a hash another tool wrote (any length from 8 hex digits, or `blake3:…` as
    InvokeAI writes) names a model with these `hashes`: one is a prefix of the other."""
    foreign = foreign.strip().lower()
    if len(foreign) < MIN_MATCH_DIGITS or not re.fullmatch(r"[0-9a-f]+", foreign):
        return False
    return any(ours.startswith(foreign) or foreign.startswith(ours) for ours in hashes.values())
