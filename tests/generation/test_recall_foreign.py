"""Recall of PNGs other tools made (#19). Fixtures are written in each tool's own layout, as
its source writes it: A1111's `parameters` infotext (`processing.create_infotext`: prompt,
`Negative prompt:`, then `Key: value` pairs, quoted when they hold ',' or ':'), InvokeAI's
`invokeai_metadata` (`CoreMetadataInvocation` dumped without None fields, models as
`{key, hash, name, base, type}`, hashes `blake3:<hex>` of the file) and ComfyUI's `prompt`
(the API-format graph: node id -> `{"inputs", "class_type"}`, links `[node id, output]`),
with hashes computed here by hashlib/blake3. The truth: the request a user would type."""

from __future__ import annotations

import json

import blake3
import pytest
import torch
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from loraworks.generation import GenerateRequest, LoRASpec, RecallError, recall_settings
from loraworks.models import ModelManager
from tests.embeddings.producers import write_a1111
from tests.fixtures.a1111_hashes import autov3 as _autov3
from tests.fixtures.a1111_hashes import sha256 as _sha
from tests.fixtures.checkpoints import published_layout, write_checkpoint
from tests.models.lora_files import kohya_sd1_tensors, write


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A root with a single-file main model, two LoRAs and an embedding (never loaded)."""
    work = tmp_path_factory.mktemp("files")
    mm = ModelManager.open(tmp_path_factory.mktemp("root"), scan=False)
    layout = published_layout("sd1", "tiny")
    mm.install(write_checkpoint(work / "tiny-ckpt.safetensors", layout, torch.float16))
    mm.install(write(work / "star.safetensors", kohya_sd1_tensors(seed=1), {"ss_x": "1"}))
    mm.install(write(work / "sd1-b.safetensors", kohya_sd1_tensors(seed=2)))
    mm.install(write_a1111(work / "zq.pt", torch.randn(2, 768)))
    yield mm
    mm.close()


def _bytes(mm: ModelManager, name: str, type_: str) -> bytes:
    return mm.get(name, type=type_).path.read_bytes()


def _png(path, chunks: dict[str, str]):
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _typed_by_hand(mm: ModelManager, **changes) -> GenerateRequest:
    """What a user types for the fixtures' image."""
    fields = dict(
        model=mm.get("tiny-ckpt").key,
        prompt="masterpiece, a red circle",
        negative_prompt="blurry, lowres",
        steps=20,
        cfg=7.0,
        seed=1234,
        width=512,
        height=768,
        scheduler="dpmpp_2m_karras",
        loras=[
            LoRASpec(name=mm.get("star").key, weight=0.8),
            LoRASpec(
                name=mm.get("sd1-b").key,
                weight={"unet": 1.0, "text_encoder": 0.5, "text_encoder_2": 0.5},
            ),
        ],
    )
    return GenerateRequest(**{**fields, **changes})


def _a1111_text(mm: ModelManager, lora_b: str = "sd1-b", sampler: str = "DPM++ 2M") -> str:
    main = _sha(_bytes(mm, "tiny-ckpt", "main"))[:10]
    star, b = _autov3(_bytes(mm, "star", "lora")), _autov3(_bytes(mm, "sd1-b", "lora"))
    ti = _sha(_bytes(mm, "zq", "embedding"))[:12]
    # the LoRA file was renamed in A1111's folder: only its hash finds it here
    return (
        f"masterpiece, a red circle <lora:star_v2:0.8>, <lora:{lora_b}:0.5:1>\n"
        "Negative prompt: blurry, lowres\n"
        f"Steps: 20, Sampler: {sampler}, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
        f'Size: 512x768, Model hash: {main}, Model: renamed_model, Lora hashes: "star_v2: '
        f'{star}, {lora_b}: {b}", TI hashes: "zq: {ti}", Version: v1.10.1'
    )


def test_a1111_parameters_give_the_request_typed_by_hand(root, tmp_path):
    png = _png(tmp_path / "a.png", {"parameters": _a1111_text(root)})
    recalled = recall_settings(png, root)
    assert (recalled.source, recalled.unmapped) == ("A1111", [])
    assert recalled.request() == _typed_by_hand(root)


def test_an_older_a1111_sampler_name_and_a_hashless_lora_found_by_name(root, tmp_path):
    text = (
        "a red circle, <lora:star:1>\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, "
        "Seed: 5, Size: 512x512, Model: tiny-ckpt"
    )
    recalled = recall_settings(_png(tmp_path / "old.png", {"parameters": text}), root)
    assert recalled.unmapped == []
    assert recalled.request() == _typed_by_hand(
        root,
        prompt="a red circle",
        negative_prompt=None,
        seed=5,
        width=512,
        height=512,
        loras=[LoRASpec(name=root.get("star").key, weight=1.0)],
    )


def _invokeai(mm: ModelManager) -> dict:
    def ident(name: str, type_: str) -> dict:
        digest = "blake3:" + blake3.blake3(_bytes(mm, name, type_)).hexdigest()
        other_name = {"tiny-ckpt": "Tiny Checkpoint", "star": "star (v2)"}.get(name, name)
        return {"key": "5f0c…", "hash": digest, "name": other_name, "base": "sd-1", "type": type_}

    return {
        "generation_mode": "txt2img",
        "positive_prompt": "masterpiece, a red circle",
        "negative_prompt": "blurry, lowres",
        "width": 512,
        "height": 768,
        "seed": 1234,
        "rand_device": "cpu",
        "cfg_scale": 7.0,
        "cfg_rescale_multiplier": 0.0,
        "steps": 20,
        "scheduler": "dpmpp_2m_k",
        "seamless_x": False,
        "seamless_y": False,
        "clip_skip": 0,
        "model": ident("tiny-ckpt", "main"),
        "controlnets": [],
        "ipAdapters": [],
        "t2iAdapters": [],
        "loras": [
            {"model": ident("star", "lora"), "weight": 0.8},
            {"model": ident("sd1-b", "lora"), "weight": 0.75},
        ],
        "app_version": "4.2.9",
    }


def test_invokeai_metadata_gives_the_request_typed_by_hand(root, tmp_path):
    data = _invokeai(root)
    png = _png(tmp_path / "i.png", {"invokeai_metadata": json.dumps(data)})
    recalled = recall_settings(png, root)
    assert (recalled.source, recalled.unmapped) == ("InvokeAI", [])
    loras = [LoRASpec(name=root.get("star").key, weight=0.8)]
    loras.append(LoRASpec(name=root.get("sd1-b").key, weight=0.75))  # one weight in InvokeAI
    assert recalled.request() == _typed_by_hand(root, loras=loras)


def test_invokeai_3_metadata_names_models_without_hashes(root, tmp_path):
    data = _invokeai(root)
    data["model"] = {"model_name": "tiny-ckpt", "base_model": "sd-1", "model_type": "main"}
    data["loras"] = [{"lora": {"model_name": "star", "base_model": "sd-1"}, "weight": 0.8}]
    data["positive_prompt"] = "a (red)1.2 circle++"  # compel weighting: listed, not guessed
    recalled = recall_settings(
        _png(tmp_path / "i3.png", {"invokeai_metadata": json.dumps(data)}), root
    )
    assert recalled.settings["model"] == root.get("tiny-ckpt").key
    assert recalled.settings["loras"] == [{"name": root.get("star").key, "weight": 0.8}]
    assert len(recalled.unmapped) == 1 and "weighting syntax" in recalled.unmapped[0]


def _comfyui() -> dict:
    return {
        "3": {
            "inputs": {
                "seed": 1234,
                "steps": 20,
                "cfg": 7.0,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1.0,
                "model": ["11", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
            "class_type": "KSampler",
            "_meta": {"title": "KSampler"},
        },
        "4": {
            "inputs": {"ckpt_name": "SD1.5\\tiny-ckpt.safetensors"},
            "class_type": "CheckpointLoaderSimple",
        },
        "5": {
            "inputs": {"width": 512, "height": 768, "batch_size": 1},
            "class_type": "EmptyLatentImage",
        },
        "6": {
            "inputs": {"text": "masterpiece, a red circle", "clip": ["11", 1]},
            "class_type": "CLIPTextEncode",
        },
        "7": {
            "inputs": {"text": "blurry, lowres", "clip": ["11", 1]},
            "class_type": "CLIPTextEncode",
        },
        "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode"},
        "9": {
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
            "class_type": "SaveImage",
        },
        "10": {
            "inputs": {
                "lora_name": "styles/star.safetensors",
                "strength_model": 0.8,
                "strength_clip": 0.8,
                "model": ["4", 0],
                "clip": ["4", 1],
            },
            "class_type": "LoraLoader",
        },
        "11": {
            "inputs": {
                "lora_name": "sd1-b.safetensors",
                "strength_model": 1.0,
                "strength_clip": 0.5,
                "model": ["10", 0],
                "clip": ["10", 1],
            },
            "class_type": "LoraLoader",
        },
    }


def test_comfyui_prompt_graph_gives_the_request_typed_by_hand(root, tmp_path):
    chunks = {"prompt": json.dumps(_comfyui()), "workflow": json.dumps({"nodes": []})}
    recalled = recall_settings(_png(tmp_path / "c.png", chunks), root)
    assert (recalled.source, recalled.unmapped) == ("ComfyUI", [])
    assert recalled.request() == _typed_by_hand(root)


def test_an_unmappable_sampler_and_a_missing_lora_are_listed(root, tmp_path):
    text = _a1111_text(root, lora_b="not-installed", sampler="DPM++ SDE")
    b_hash = _autov3(_bytes(root, "sd1-b", "lora"))
    text = text.replace(b_hash, "0123456789ab")  # a LoRA that is installed nowhere here
    recalled = recall_settings(_png(tmp_path / "u.png", {"parameters": text}), root)
    assert len(recalled.unmapped) == 2
    assert "DPM++ SDE" in recalled.unmapped[0]
    assert "not-installed" in recalled.unmapped[1] and "not installed" in recalled.unmapped[1]
    with pytest.raises(RecallError, match=r"DPM\+\+ SDE.*not-installed"):
        recalled.request()
    assert recalled.request(anyway=True) == _typed_by_hand(
        root, scheduler=None, loras=_typed_by_hand(root).loras[:1]
    )
    graph = _comfyui()
    graph["3"]["inputs"]["sampler_name"] = "uni_pc"
    graph["10"]["inputs"]["lora_name"] = "gone.safetensors"
    comfy = recall_settings(_png(tmp_path / "cu.png", {"prompt": json.dumps(graph)}), root)
    assert ["uni_pc" in comfy.unmapped[0], "'gone'" in comfy.unmapped[1]] == [True, True]


def test_other_a1111_settings_are_listed_not_dropped(root, tmp_path):
    text = _a1111_text(root) + ", Clip skip: 2, Hires upscale: 2, Denoising strength: 0.4"
    text = text.replace("a red circle", "a red circle <hypernet:anime:1>")
    unmapped = recall_settings(_png(tmp_path / "h.png", {"parameters": text}), root).unmapped
    assert [u.split(":")[0] for u in unmapped] == [
        "<hypernet",
        "Clip skip",
        "Hires upscale",
        "Denoising strength",
    ]


@pytest.mark.parametrize(
    "chunks, message",
    [
        ({}, "no settings found"),
        ({"parameters": "x" * 70000}, "unreadable A1111 infotext"),
        ({"parameters": "a\0b\nSteps: 1, Seed: 2, Size: 8x8"}, "unreadable A1111 infotext"),
        ({"invokeai_metadata": "{not json"}, "damaged InvokeAI metadata"),
        ({"invokeai_metadata": "[1, 2]"}, "not a JSON object"),
        ({"prompt": json.dumps({"1": {"class_type": "VAEDecode"}})}, "without a KSampler"),
    ],
)
def test_bad_metadata_is_a_clear_error(root, tmp_path, chunks, message):
    with pytest.raises(RecallError, match=message):
        recall_settings(_png(tmp_path / "bad.png", chunks), root)


def test_a_graph_loop_and_a_file_that_is_no_png(root, tmp_path):
    graph = _comfyui()
    graph["10"]["inputs"]["model"] = ["11", 0]  # 10 <- 11 <- 10 ...
    with pytest.raises(RecallError, match="a loop"):
        recall_settings(_png(tmp_path / "loop.png", {"prompt": json.dumps(graph)}), root)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(RecallError, match="not a readable PNG"):
        recall_settings(tmp_path / "x.png", root)


def test_malformed_values_are_listed_and_left_unset(root, tmp_path):
    text = _a1111_text(root).replace("Steps: 20", "Steps: many").replace("Seed: 1234", "Seed: -4")
    text = text.replace("Size: 512x768", "Size: 513x768")
    recalled = recall_settings(_png(tmp_path / "m.png", {"parameters": text}), root)
    assert len(recalled.unmapped) == 3
    assert not {"steps", "seed", "width", "height"} & set(recalled.settings)


# --- end to end: the CLI recalls an A1111 PNG with the pixels of the request typed by hand --


def test_cli_recall_of_an_a1111_png_gives_the_hand_typed_pixels(mm, tmp_path):
    import numpy as np

    from loraworks.cli import app
    from loraworks.generation import generate
    from tests.generation.conftest import tiny_request

    star = _autov3(mm.get("sd1-a", type="lora").path.read_bytes())
    text = (
        "a red circle, <lora:renamed:0.7>\n"
        "Steps: 2, Sampler: Euler, Schedule type: Automatic, CFG scale: 1, Seed: 3, "
        f'Size: 64x64, Model: tiny-sd1, Lora hashes: "renamed: {star}", Version: v1.10.1'
    )
    png = _png(tmp_path / "from-a1111.png", {"parameters": text})
    out = CliRunner().invoke(app, ["recall", str(png), "--root", str(mm.root)])
    assert out.exit_code == 0, out.output
    made = out.output.split("(seed")[0].split()[-1]
    typed = generate(tiny_request("sd1", loras=[{"name": "sd1-a", "weight": 0.7}]), manager=mm)
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(typed.images[0])))
    dry = CliRunner().invoke(app, ["recall", str(png), "--dry-run", "--root", str(mm.root)])
    assert dry.exit_code == 0 and '"scheduler": "euler"' in dry.output


@pytest.mark.parametrize("tag, weight", [("<lora:star:0>", 0.0), ("<lora:star>", 1.0)])
def test_a1111_tag_weights_zero_and_bare(root, tmp_path, tag, weight):
    text = f"a cat {tag}\nSteps: 20, Sampler: Euler, Seed: 5, Size: 512x512, Model: tiny-ckpt"
    recalled = recall_settings(_png(tmp_path / "w.png", {"parameters": text}), root)
    assert recalled.settings["loras"] == [{"name": root.get("star").key, "weight": weight}]
