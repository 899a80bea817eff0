"""`loraworks generate` and `loraworks recall`: thin wrappers over the Python API with a
progress bar; every user error is one line on stderr and exit code 1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loraworks.cli.console import err, fail, say, warn

RootOption = typer.Option(
    None, "--root", help="models root (default: $LORAWORKS_ROOT or ~/loraworks)"
)


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(recall)


def _one_line(exc: Exception) -> str:
    """Pydantic errors as `field: message; ...`, everything else as its message."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(exc)


@contextmanager
def _user_errors() -> Iterator[None]:
    from loraworks.generation import GenerationCancelled

    try:
        yield
    except typer.Exit:
        raise
    except (GenerationCancelled, KeyboardInterrupt):
        say("cancelled; no image saved for the unfinished one", to_err=True)
        raise typer.Exit(130) from None
    except (ValueError, OSError) as exc:  # every error a user can cause is a ValueError
        fail(_one_line(exc))
    except Exception as exc:  # a bug, still reported as one line rather than a traceback
        fail(f"unexpected {type(exc).__name__}: {exc}")


def _size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h or w)
    except ValueError:
        raise ValueError(
            f"--size {text!r}: write WIDTHxHEIGHT, e.g. 512x512 (or one number for a square)"
        ) from None


@contextmanager
def _progress_bar() -> Iterator[Callable[[Any], None]]:
    """One bar per generation: the main model's components while it loads (when the cache
    does not hold it yet), then the denoise steps of every image."""
    from loraworks.generation import LoadEvent, reporting_loads

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None, count="")

        def on_event(event: Any) -> None:
            if isinstance(event, LoadEvent):
                done, total, unit = event.index, event.total, "components"
                description = f"loading {event.component}"
            else:
                done, unit = event.image * event.total + event.step, "steps"
                total = event.total * event.images
                description = f"image {event.image + 1}/{event.images}"
            bar.update(
                task,
                description=description,
                total=total,
                completed=done,
                count=f"{done}/{total} {unit}",
            )

        with reporting_loads(on_event):
            yield on_event


def _report(result: Any) -> None:
    for warning in result.warnings:
        warn(warning)
    for path, seed in zip(result.images, result.seeds, strict=True):
        say(f"{path}  (seed {seed})")


def _run_local(request: Any, root: Path | None) -> Any:
    from loraworks.generation import generate as generate_images
    from loraworks.models import ModelManager

    mm = ModelManager.open(root)
    try:
        with _progress_bar() as on_step:
            return generate_images(request, manager=mm, progress=on_step)
    finally:
        mm.close()


def generate(
    prompt: str = typer.Argument(..., help="prompt; may hold <lora:name:weight> tags"),
    model: str = typer.Option(..., "--model", "-m", help="main model name or key"),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        "-l",
        help="name, name:weight or name:te_weight:unet_weight, with :lbw=PRESET|v1,v2,… and"
        " :start=/:stop= (a step number, or a fraction with a decimal point); repeatable",
    ),
    negative: str | None = typer.Option(None, "--negative", help="negative prompt"),
    steps: int | None = typer.Option(None, help="denoising steps (default: config / LCM preset)"),
    cfg: float | None = typer.Option(None, help="guidance scale; <= 1 skips the uncond pass"),
    scheduler: str | None = typer.Option(
        None, help="euler | euler_a | dpmpp_2m | dpmpp_2m_karras | ddim | lcm | tcd"
    ),
    spacing: str | None = typer.Option(
        None, help="timestep spacing of euler/euler_a/ddim/dpm++: leading | trailing | linspace"
    ),
    eta: float | None = typer.Option(None, help="tcd's gamma or ddim's eta, 0-1"),
    seed: int | None = typer.Option(None, help="seed of the first image (next ones: +1 each)"),
    size: str | None = typer.Option(None, help="WIDTHxHEIGHT, e.g. 512x512"),
    n: int = typer.Option(1, "-n", help="number of images"),
    init_image: Path | None = typer.Option(None, "--init-image", help="img2img source image"),
    strength: float | None = typer.Option(None, help="img2img: how much to change (0-1]"),
    preset: str | None = typer.Option(
        None, help="few-step preset of config.toml: lcm | tcd | lightning | hyper | pcm"
    ),
    trigger_words: bool = typer.Option(
        False, "--trigger-words", help="append the LoRAs' trigger words when absent"
    ),
    root: Path | None = RootOption,
    # --- remote generation (server helper) ---
    server: str | None = typer.Option(
        None, "--server", help="generate on a running `loraworks serve` at this URL"
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="LORAWORKS_TOKEN", help="the server's token, if it has one"
    ),
) -> None:
    """Generate images; prints where each one was saved (its PNG holds the recipe)."""
    from loraworks.generation import GenerateRequest
    from loraworks.generation.prompt import parse_lora_option

    with _user_errors():
        width, height = _size(size)
        request = GenerateRequest(
            model=model,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            cfg=cfg,
            scheduler=scheduler,
            spacing=spacing,
            eta=eta,
            seed=seed,
            batch_size=n,
            loras=[parse_lora_option(text) for text in lora],
            init_image=init_image,
            strength=strength,
            preset=preset,
            append_trigger_words=trigger_words,
        )
        # --- remote generation (server helper) ---
        if server is not None:
            from loraworks.server.client import submit_and_wait

            for url in submit_and_wait(server, request, token=token):
                say(url)
            return
        _report(_run_local(request, root))


def recall(
    image: Path = typer.Argument(
        ..., help="a PNG made by loraworks, A1111 (and Forge, SD.Next…), InvokeAI or ComfyUI"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="print the settings found and what does not map; generate nothing"
    ),
    anyway: bool = typer.Option(
        False, "--anyway", help="generate with what maps when some settings or models do not"
    ),
    root: Path | None = RootOption,
) -> None:
    """Re-create an image from the settings stored in its PNG (same seed and settings); models
    and LoRAs are found by hash, then by name (docs/interop.md)."""
    import json

    from loraworks.generation import recall as recall_image
    from loraworks.generation import recall_settings
    from loraworks.models import ModelManager

    with _user_errors():
        mm = ModelManager.open(root)
        try:
            if dry_run:
                found = recall_settings(image, mm)
                say(f"{found.source} image; settings:")
                say(json.dumps(found.settings, indent=2))
                for item in found.unmapped:
                    warn(f"does not map: {item}")
                return
            with _progress_bar() as on_step:
                result = recall_image(image, manager=mm, progress=on_step, anyway=anyway)
        finally:
            mm.close()
        _report(result)
