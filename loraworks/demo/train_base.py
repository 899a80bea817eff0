"""Train the demo base model `demo-shapes`: the VAE first, then UNet + text encoder.

Stage 1 trains the VAE on reconstructions; its latents are then encoded once (the VAE is
frozen afterwards, so re-encoding every step would only cost time). Stage 2 trains the UNet
and the text encoder jointly with SD's epsilon objective, min-SNR weighting, caption dropout
(so classifier-free guidance works) and an EMA of the weights, which is what gets exported.
Both stages checkpoint to the output folder and resume from it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

from loraworks.demo import architecture as arch
from loraworks.demo.data import make_set, to_tensor
from loraworks.demo.training import (
    EMA,
    StepLog,
    cosine_lr,
    encode_latents,
    epsilon_loss,
    load_checkpoint,
    resume,
    save_checkpoint,
    set_lr,
    setup_torch,
    tokenize,
)


@dataclass
class BaseTrainConfig:
    out: Path
    vae_steps: int = 840
    unet_steps: int = 4000
    images: int = 16000
    batch: int = 16
    vae_lr: float = 2e-3
    vae_crop: int = 32
    lr: float = 1e-3
    caption_dropout: float = 0.1
    offset_noise: float = 0.2
    ema_decay: float = 0.999
    decoder_steps: int = 1500
    decoder_batch: int = 8
    seed: int = 0
    checkpoint_every: int = 250


@dataclass
class EncodedSet:
    """Latents (already multiplied by the VAE scaling factor) and their caption token ids."""

    latents: torch.Tensor
    input_ids: torch.Tensor
    empty_ids: torch.Tensor


def train_vae(cfg: BaseTrainConfig, images: torch.Tensor) -> AutoencoderKL:
    """Reconstruction (MSE) plus a tiny KL term, as SD's VAE minus the perceptual/GAN losses.

    Trained on random crops: the VAE is convolutional, and a 32×32 crop costs a quarter of the
    full picture, which is most of the CPU time of the whole base model otherwise.
    """
    path = cfg.out / "vae.pt"
    vae = arch.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    state = resume(path, opt, {"vae": vae})
    start = state.get("step", 0)
    if state and start >= cfg.vae_steps:
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        return vae.eval()
    g = torch.Generator().manual_seed(cfg.seed + start)
    log = StepLog("vae")
    vae.train()
    for step in range(start, cfg.vae_steps):
        lr = cosine_lr(step, cfg.vae_steps, cfg.vae_lr, warmup=50)
        set_lr(opt, lr)
        x = _random_crops(images, cfg.batch, cfg.vae_crop, g)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(step, loss.item(), lr)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.vae_steps:
            save_checkpoint(
                path, {"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}
            )
    vae.eval()
    with torch.no_grad():
        std = vae.encode(images[:1024]).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    save_checkpoint(
        path,
        {
            "vae": vae.state_dict(),
            "opt": opt.state_dict(),
            "step": cfg.vae_steps,
            "scaling_factor": 1.0 / std,
        },
    )
    print(f"vae done: latent std {std:.4f}", flush=True)
    return vae


def _random_crops(images: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """`n` random pictures, each cropped to `size`² at a random multiple-of-8 offset."""
    picks = torch.randint(len(images), (n,), generator=g)
    offsets = torch.randint(0, (images.shape[-1] - size) // 8 + 1, (n, 2), generator=g) * 8
    return torch.stack(
        [
            images[i, :, y : y + size, x : x + size]
            for i, (y, x) in zip(picks, offsets.tolist(), strict=True)
        ]
    )


def encode_set(cfg: BaseTrainConfig, vae: AutoencoderKL, images, captions, tokenizer) -> EncodedSet:
    """Encode every picture once (posterior mean × scaling factor), cached in the output folder."""
    path = cfg.out / "latents.pt"
    cached = load_checkpoint(path)
    if cached is not None:
        return EncodedSet(**cached)
    encoded = EncodedSet(
        latents=encode_latents(vae, images),
        input_ids=tokenize(tokenizer, captions),
        empty_ids=tokenize(tokenizer, [""])[0],
    )
    save_checkpoint(path, encoded.__dict__)
    return encoded


def export_pipeline(folder: Path, vae, unet, text_encoder, tokenizer) -> Path:
    """A diffusers SD folder (model_index.json, unet/, vae/, …) in fp16 safetensors."""
    scheduler = DDIMScheduler(
        **arch.SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.to(torch.float32)
    return folder


def text_encoder_for(cfg: BaseTrainConfig):
    """The frozen text encoder: seeded random weights, saved once so a resume uses the same."""
    path = cfg.out / "text_encoder.pt"
    torch.manual_seed(cfg.seed)
    te = arch.make_text_encoder()
    state = load_checkpoint(path)
    if state is None:
        save_checkpoint(path, te.state_dict())
    else:
        te.load_state_dict(state)
    return te.requires_grad_(False).eval()


@dataclass
class CaptionTable:
    """Text-encoder outputs of each distinct caption, computed once (the encoder is frozen)."""

    states: torch.Tensor
    index: torch.Tensor
    empty: torch.Tensor

    @classmethod
    @torch.no_grad()
    def make(cls, te, data: EncodedSet) -> CaptionTable:
        unique, index = torch.unique(data.input_ids, dim=0, return_inverse=True)
        return cls(states=te(unique)[0], index=index, empty=te(data.empty_ids[None])[0])


def train_unet(cfg: BaseTrainConfig, vae, te, data: EncodedSet, tokenizer) -> Path:
    """The UNet, epsilon objective; exports the EMA weights at every checkpoint."""
    path = cfg.out / "unet.pt"
    unet = arch.make_unet()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    ema = EMA(params, cfg.ema_decay)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    state = resume(path, opt, {"unet": unet}, g)
    if state:
        ema.shadow = state["ema"]
    start = state.get("step", 0)
    captions = CaptionTable.make(te, data)
    noise_sched = arch.make_noise_scheduler()
    log = StepLog("unet")
    unet.train()
    n = len(data.latents)
    for step in range(start, cfg.unet_steps):
        lr = cosine_lr(step, cfg.unet_steps, cfg.lr, warmup=200)
        set_lr(opt, lr)
        idx = torch.randint(n, (cfg.batch,), generator=g)
        drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
        states = torch.where(
            drop[:, None, None], captions.empty, captions.states[captions.index[idx]]
        )
        loss = epsilon_loss(unet, data.latents[idx], states, noise_sched, g, cfg.offset_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        log.add(step, loss.item(), lr)
        done = step + 1 == cfg.unet_steps
        if (step + 1) % cfg.checkpoint_every == 0 or done:
            save_checkpoint(
                path,
                {
                    "unet": unet.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema.shadow,
                    "rng": g.get_state(),
                    "step": step + 1,
                },
            )
            export_ema(cfg, ema, vae, te, tokenizer, step + 1)
    return cfg.out / "model"


def export_ema(cfg: BaseTrainConfig, ema: EMA, vae, te, tokenizer, step: int) -> None:
    """Write the EMA weights as the diffusers folder `out/model` (replaced atomically)."""
    unet = arch.make_unet()
    ema.copy_to(list(unet.parameters()))
    tmp = cfg.out / "model.tmp"
    export_pipeline(tmp, vae, unet.eval(), te, tokenizer)
    (tmp / "step.txt").write_text(f"{step}\n")
    final = cfg.out / "model"
    if final.exists():
        old = cfg.out / "model.old"
        final.replace(old)
        tmp.replace(final)
        _rmtree(old)
    else:
        tmp.replace(final)
    print(f"exported {final} at step {step}", flush=True)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def finetune_decoder(
    cfg: BaseTrainConfig, vae: AutoencoderKL, data: EncodedSet, images
) -> AutoencoderKL:
    """Sharpen the decoder on full pictures from the fixed latents (MSE + L1).

    The encoder stays frozen, so the latents the UNet learns from do not change: this stage
    can run before, after or alongside UNet training. The crop-trained VAE alone blurs small
    shapes and shifts blue towards green; the decoder is what the judge sees.
    """
    path = cfg.out / "decoder.pt"
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=cfg.vae_lr / 4)
    post_quant = list(vae.post_quant_conv.parameters())
    opt.add_param_group({"params": post_quant})
    start = resume(path, opt, {"vae": vae}).get("step", 0)
    g = torch.Generator().manual_seed(cfg.seed + 2 + start)
    log = StepLog("decoder")
    vae.train()
    for step in range(start, cfg.decoder_steps):
        set_lr(opt, cosine_lr(step, cfg.decoder_steps, cfg.vae_lr / 4, warmup=50))
        idx = torch.randint(len(images), (cfg.decoder_batch,), generator=g)
        recon = vae.decode(data.latents[idx] / vae.config.scaling_factor).sample
        loss = F.mse_loss(recon, images[idx]) + 0.1 * F.l1_loss(recon, images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(step, loss.item(), opt.param_groups[0]["lr"])
        done = step + 1 == cfg.decoder_steps
        if (step + 1) % cfg.checkpoint_every == 0 or done:
            save_checkpoint(
                path, {"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}
            )
    return vae.eval()


def load_decoder(cfg: BaseTrainConfig, vae: AutoencoderKL) -> AutoencoderKL:
    """The VAE with the fine-tuned decoder, when that stage has run."""
    state = load_checkpoint(cfg.out / "decoder.pt")
    if state is not None:
        vae.load_state_dict(state["vae"])
    return vae


@dataclass
class Prepared:
    """What every stage needs: pictures, tokenizer, frozen text encoder, VAE and latents."""

    images: torch.Tensor
    tokenizer: object
    text_encoder: object
    vae: AutoencoderKL
    data: EncodedSet


def prepare(cfg: BaseTrainConfig) -> Prepared:
    setup_torch(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    shapes = make_set(cfg.images, cfg.seed)
    images = to_tensor(shapes.images)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = arch.make_tokenizer(Path(tmp))
    te = text_encoder_for(cfg)
    vae = train_vae(cfg, images)
    data = encode_set(cfg, vae, images, shapes.captions, tokenizer)
    return Prepared(images, tokenizer, te, vae, data)


def train_base(cfg: BaseTrainConfig, stage: str = "all") -> Path:
    """Stages: `all` (VAE, UNet, decoder, export), `decoder` alone (may run alongside the
    UNet), or `export` (the current EMA UNet with the current decoder)."""
    p = prepare(cfg)
    if stage in ("all", "decoder"):
        p.vae = finetune_decoder(cfg, p.vae, p.data, p.images)
    if stage == "decoder":
        return cfg.out / "decoder.pt"
    vae = load_decoder(cfg, p.vae)
    if stage == "all":
        train_unet(cfg, vae, p.text_encoder, p.data, p.tokenizer)
    state = load_checkpoint(cfg.out / "unet.pt")
    if state is None:
        raise ValueError(f"no UNet checkpoint in {cfg.out}; train first")
    unet_params = list(arch.make_unet().parameters())
    ema = EMA(unet_params, cfg.ema_decay)
    ema.shadow = state["ema"]
    export_ema(cfg, ema, vae, p.text_encoder, p.tokenizer, state["step"])
    return cfg.out / "model"


if __name__ == "__main__":
    from loraworks.demo.train_commands import run_group

    run_group("base")
