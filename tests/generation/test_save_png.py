"""`save_png` writes whole images or nothing: a failure while writing leaves no file under
`outputs/`, and a folder that cannot be written is a `GenerationError` saying so (the server
then reports the item failed with that message, not "failed unexpectedly" and a traceback)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from loraworks.generation.errors import GenerationError
from loraworks.generation.recipe import Recipe, read_recipe, save_png


def _recipe(seed: int = 7) -> Recipe:
    model = {"key": "m", "name": "m", "hash": None, "base": "sd1"}
    fields = dict(prompt="a", negative_prompt=None, steps=2, cfg=1.0, scheduler="euler")
    return Recipe.model_validate(
        {"loraworks_version": "0", "model": model, "loras": [], "seed": seed, **fields}
        | {"width": 8, "height": 8}
    )


class _DiskFull:
    """An image whose encoding writes part of a PNG and then fails, like a full disk."""

    def save(self, fp, format: str, pnginfo) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failure_while_writing_leaves_no_file(tmp_path):
    with pytest.raises(GenerationError, match="No space left on device"):
        save_png(_DiskFull(), tmp_path, _recipe())  # type: ignore[arg-type]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_saved_images_are_whole_and_never_overwrite(tmp_path):
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    paths = [save_png(image, tmp_path, _recipe()) for _ in range(3)]
    assert len(set(paths)) == 3
    assert sorted(tmp_path.rglob("*.*")) == sorted(paths)
    for path in paths:
        assert Image.open(path).getpixel((0, 0)) == (10, 20, 30)
        assert read_recipe(path).seed == 7
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporary left


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or (root ignores
    permissions) one under the read-only /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "outputs"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/loraworks-outputs")
    try:
        folder.mkdir()
    except OSError:
        return folder
    folder.rmdir()
    pytest.skip("no unwritable folder on this machine")


def test_an_unwritable_outputs_folder_is_a_clear_error(tmp_path):
    folder = _unwritable(tmp_path)
    image = Image.new("RGB", (8, 8))
    with pytest.raises(GenerationError, match=r"cannot save the image in .*is outputs/ writable"):
        save_png(image, folder, _recipe())
