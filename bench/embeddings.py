"""Prompt encoding with 0 and with 5 textual-inversion embeddings, on SD1.5-size and SDXL-size
text encoders (random weights, published architectures), against one 512 px SD1.5 UNet step,
for docs/benchmarks.md.

    .venv/bin/python bench/embeddings.py --repeats 5

Each case encodes a prompt and a negative prompt (guided) with the conditioning cache off:
plain text, then the same text where five words are triggers of 4-vector embeddings (three in
the prompt, two in the negative). The aim (issue 17): the embeddings add under 10% of one
512 px UNet step. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.embeddings import make_embedding
from loraworks.generation.conditioning import encode_prompt
from tests.embeddings.truth import words
from tests.fixtures.models import build_text_encoders, build_tokenizer, build_unet

PROMPT = "a portrait of a woman, {0}, detailed face, {1}, soft light, {2}, 85mm photo"
NEGATIVE = "blurry, {3}, lowres, {4}, watermark"
PLAIN = ("red", "blue", "green", "ugly", "bad")
TRIGGERS = tuple(f"zqemb{i}" for i in range(5))


def _embeddings(base: str) -> list:
    widths = {"sd1": {"*": 768}, "sdxl": {"clip_l": 768, "clip_g": 1280}}[base]
    return [
        make_embedding(t, "bench", {k: torch.randn(4, w) for k, w in widths.items()})
        for t in TRIGGERS
    ]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoding(base: str, repeats: int, folder: Path) -> tuple[float, float]:
    te, te2 = build_text_encoders(base, "full")
    tok = build_tokenizer(folder / base)
    pipe = SimpleNamespace(
        tokenizer=tok, text_encoder=te, unet=torch.nn.Linear(1, 1), text_encoder_2=te2
    )
    if te2 is not None:
        pipe.tokenizer_2 = tok
    used = words(*_embeddings(base))

    def run(names, embeddings):
        with torch.inference_mode():
            encode_prompt(
                pipe,
                PROMPT.format(*names),
                NEGATIVE.format(*names),
                True,
                512,
                512,
                embeddings,
            )

    plain = _time(lambda: run(PLAIN, None), repeats)
    with_five = _time(lambda: run(TRIGGERS, used), repeats)
    return plain, with_five


def unet_step(repeats: int) -> float:
    unet = build_unet("sd1", "full")
    latents = torch.randn(2, 4, 64, 64)
    context = torch.randn(2, 77, 768)

    def step():
        with torch.inference_mode():
            unet(latents, torch.tensor(500), encoder_hidden_states=context)

    return _time(step, max(1, repeats // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {base: encoding(base, args.repeats, Path(tmp)) for base in ("sd1", "sdxl")}
    step = unet_step(args.repeats)
    print(f"device cpu, {torch.get_num_threads()} threads, fp32")
    print(f"one 512 px SD1.5 UNet step (batch 2, guided): {step * 1000:.0f} ms")
    print("encoder | 0 embeddings ms | 5 embeddings ms | added ms | added / UNet step")
    for base, (plain, five) in rows.items():
        added = five - plain
        print(
            f"{base} | {plain * 1000:.1f} | {five * 1000:.1f} | {added * 1000:+.1f} | "
            f"{added / step:+.1%}"
        )


if __name__ == "__main__":
    main()
