"""Writes kohya_sdxl_unet_modules.txt: every Linear/Conv module name of the SDXL UNet as kohya
SDXL LoRA files spell it (``lora_unet_`` + flattened sgm/LDM name), derived from the published
sgm layout (``sgm/modules/diffusionmodules/openaimodel.py`` with the SDXL config: channel_mult
[1, 2, 4], num_res_blocks 2, transformer_depth [0, 2, 10], context_dim 2048, adm_in_channels
2816), not from loraworks' own conversion. Run: python tests/lora/data/make_sdxl_sgm_names.py
"""

from pathlib import Path

RES = ["in_layers_2", "emb_layers_1", "out_layers_3"]  # conv1, time_emb_proj, conv2


def transformer(prefix: str, depth: int) -> list[str]:
    out = [f"{prefix}_proj_in", f"{prefix}_proj_out"]
    for d in range(depth):
        b = f"{prefix}_transformer_blocks_{d}"
        for a in ("attn1", "attn2"):
            out += [f"{b}_{a}_to_q", f"{b}_{a}_to_k", f"{b}_{a}_to_v", f"{b}_{a}_to_out_0"]
        out += [f"{b}_ff_net_0_proj", f"{b}_ff_net_2"]
    return out


def names() -> list[str]:
    out = [
        "input_blocks_0_0",
        "time_embed_0",
        "time_embed_2",
        "label_emb_0_0",
        "label_emb_0_2",
        "out_2",
    ]
    depth = {0: 0, 1: 2, 2: 10}
    chans = {0: 320, 1: 640, 2: 1280}
    n, ch = 1, 320
    for level in range(3):
        for _ in range(2):
            out += [f"input_blocks_{n}_0_{r}" for r in RES]
            if ch != chans[level]:
                out.append(f"input_blocks_{n}_0_skip_connection")
            ch = chans[level]
            if depth[level]:
                out += transformer(f"input_blocks_{n}_1", depth[level])
            n += 1
        if level < 2:
            out.append(f"input_blocks_{n}_0_op")
            n += 1
    out += [f"middle_block_0_{r}" for r in RES] + [f"middle_block_2_{r}" for r in RES]
    out += transformer("middle_block_1", 10)
    for i, level in enumerate((2, 1, 0)):
        for j in range(3):
            n = 3 * i + j
            out += [f"output_blocks_{n}_0_{r}" for r in RES] + [
                f"output_blocks_{n}_0_skip_connection"
            ]
            if depth[level]:
                out += transformer(f"output_blocks_{n}_1", depth[level])
        if level > 0:
            sub = 2 if depth[level] else 1
            out.append(f"output_blocks_{3 * i + 2}_{sub}_conv")
    return sorted("lora_unet_" + x for x in out)


if __name__ == "__main__":
    p = Path(__file__).with_name("kohya_sdxl_unet_modules.txt")
    p.write_text("\n".join(names()) + "\n")
    print(p, len(names()))
