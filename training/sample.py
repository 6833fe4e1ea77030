"""`yume-train sample`: generate a world block by block under per-block actions and event texts.

From an image (I2V: its VAE latent is the first history frame) or from text alone (T2V: the
first block has no history), each block is denoised with the few-step schedule and conditioned
through the TSCM history on every earlier generated block; its text is the block's event
embedding (encoded once per distinct text) plus the action embedding from the cache. Writes an
mp4 (16 fps), a JSON of each block's action and event text, and the per-block latency.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from curation.manifest import atomic_write_json
from model.sampling import autocast, few_step_sigmas, rollout
from model.text import ActionEmbeddingCache, TextEncoder
from model.vae import STRIDE, VideoVAE
from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE
from training.config import SampleConfig
from training.distill import load_transformer, write_video

# fields a run folder's config fixes (its weights only work with them)
RUN_FIELDS = (
    "model",
    "vae",
    "text_encoder",
    "event_len",
    "action_len",
    "action_style",
    "pred_latent_frames",
    "shift",
)
ARROWS = set("→←↑↓")


def parse_action(token: str) -> tuple[int, int]:
    """``W``, ``W+A``, ``←``, ``S+D+↑→``, ``None``, ``·`` -> (keys, mouse) codes."""
    keys, mouse = set(), ""
    for part in (p.strip() for p in token.split("+")):
        if part in ("", "None", "·"):
            continue
        if set(part) <= ARROWS:
            mouse += part
        elif part.upper() in ("W", "S", "D", "A"):
            keys.add(part.upper())
        else:
            raise ValueError(f"action {token!r}: {part!r} is neither W/A/S/D nor arrows")
    key = "+".join(k for k in "WSDA" if k in keys) or "None"
    vert = "".join(c for c in mouse if c in "↑↓")
    horiz = "".join(c for c in mouse if c in "→←")
    mouse_label = (vert + horiz) or "·"
    if key not in KEY_CODE or mouse_label not in MOUSE_CODE:
        raise ValueError(f"action {token!r}: not one of the 9 key and 9 mouse states")
    return KEY_CODE[key], MOUSE_CODE[mouse_label]


def parse_plan(actions: str, prompt: str, blocks: int | None) -> list[dict]:
    """Per-block ``{"keys", "mouse", "event"}``: ``actions`` is a comma list or a file (one
    block per line, ``#`` comments); ``ACTION|TEXT`` switches the event text from that block
    on. ``blocks`` beyond the list repeat the last action."""
    path = Path(actions)
    if "\n" not in actions and len(actions) < 4096 and path.is_file():
        lines = path.read_text().splitlines()
        items = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    else:
        items = [x.strip() for x in actions.split(",") if x.strip()]
    if not items:
        raise ValueError("no actions given")
    plan, event = [], prompt
    for item in items:
        token, sep, text = item.partition("|")
        event = text.strip() if sep else event
        k, m = parse_action(token)
        plan.append({"keys": KEYS[k], "mouse": MOUSE[m], "event": event})
    n = blocks or len(plan)
    return (plan + [plan[-1]] * n)[:n]


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """An image, covered and centre-cropped to (height, width): uint8 (1, 1, H, W, 3)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    scale = max(height / img.height, width / img.width)
    img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))))
    left, top = (img.width - width) // 2, (img.height - height) // 2
    arr = np.asarray(img.crop((left, top, left + width, top + height)))
    return torch.from_numpy(arr.copy())[None, None]


def resolve(cfg: SampleConfig) -> tuple[SampleConfig, torch.nn.Module, dict]:
    """The generator and the config with a run folder's model, encoders and geometry."""
    model, info = load_transformer(cfg.weights, cfg.model, cfg.seed)
    saved = info["config"]
    if saved is not None:
        fixed = {k: saved[k] for k in RUN_FIELDS if k in saved}
        if "denoising_steps" in saved:  # a distill run: its few-step schedule
            fixed["denoising_steps"] = tuple(saved["denoising_steps"])
            fixed["warp_denoising_steps"] = saved["warp_denoising_steps"]
        cfg = dataclasses.replace(cfg, **fixed)
    return cfg, model.eval().requires_grad_(False), info


def device_of(cfg: SampleConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


@torch.no_grad()
def generate(
    cfg: SampleConfig,
    model: torch.nn.Module,
    text: TextEncoder,
    actions: ActionEmbeddingCache,
    plan: list[dict],
    *,
    context: torch.Tensor | None = None,
    select: bool = True,
    sigmas: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """The blocks' latents ``(1, C, Fp, h, w)`` and the seconds each block took.

    ``context``: I2V latents ``(1, C, 1, h, w)`` or None (T2V); ``select``: TSCM temporal
    sampling of far history (False: every history frame in attention); ``sigmas``: another
    schedule (default: the config's few steps)."""
    device = next(model.parameters()).device
    events = {e: None for e in (b["event"] for b in plan)}
    for e in events:
        events[e] = text.encode_events([e]).float().to(device)  # (1, Le, D)
    texts = []
    for b in plan:
        act = actions.lookup(
            torch.tensor([KEY_CODE[b["keys"]]]), torch.tensor([MOUSE_CODE[b["mouse"]]])
        )
        texts.append(torch.cat([events[b["event"]], act.float().to(device)], dim=1))
    if sigmas is None:
        sigmas = few_step_sigmas(cfg.denoising_steps, cfg.shift, cfg.warp_denoising_steps)
    h, w = cfg.height // STRIDE[1], cfg.width // STRIDE[2]
    shape = (1, model.config.in_channels, cfg.pred_latent_frames, h, w)
    gen = torch.Generator().manual_seed(cfg.seed)
    times, t0 = [], [time.perf_counter()]

    def tick(_k: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t0[0])
        t0[0] = now

    with autocast(device, cfg.mixed_precision):
        outs = rollout(
            model,
            None if context is None else context.to(device),
            texts,
            shape,
            sigmas,
            gen,
            select=select,
            tiny_random=True,
            on_block=tick,
        )
    return [x.float() for _, x, _ in outs], times


def sample(cfg: SampleConfig, echo=print) -> dict:
    """Generate ``cfg``'s blocks; write the mp4 and its JSON; returns the summary."""
    cfg, model, info = resolve(cfg)
    device = device_of(cfg)
    if device.type == "cuda" and cfg.mixed_precision == "bf16":
        model.cast_parameters(torch.bfloat16)
    model = model.to(device)
    if cfg.compile:
        model = torch.compile(model)
    plan = parse_plan(cfg.actions, cfg.prompt, cfg.blocks)
    text = TextEncoder.load(cfg.text_encoder, event_len=cfg.event_len, action_len=cfg.action_len)
    text = text.to(device)
    cache_path = (
        Path(cfg.weights) / f"action_cache-{cfg.action_style}.safetensors" if cfg.weights else None
    )
    if cache_path is not None and cache_path.exists():
        actions = ActionEmbeddingCache.load_or_build(text, cache_path, cfg.action_style)
    else:
        actions = ActionEmbeddingCache.build(text, cfg.action_style)
    vae = VideoVAE.load(cfg.vae).to(device)
    context = None
    if cfg.image:
        context = vae.encode(load_image(cfg.image, cfg.height, cfg.width).to(device)).float()
    blocks, times = generate(cfg, model, text, actions, plan, context=context)
    for k, (b, t) in enumerate(zip(plan, times, strict=True)):
        echo(f"block {k:3d}  {b['keys']:>4}/{b['mouse']:<2}  {t * 1000:8.1f} ms")
    latents = torch.cat(([context] if context is not None else []) + blocks, dim=2)
    t0 = time.perf_counter()
    video = vae.decode(latents)[0].cpu()  # (T, H, W, 3)
    decode_s = time.perf_counter() - t0
    tiny = bool(info["tiny_random"] or vae.tiny_random or text.tiny_random)
    out = Path(cfg.out)
    if tiny and ".tiny-random" not in out.name:
        out = out.with_name(f"{out.stem}.tiny-random{out.suffix}")
    write_video(out, video, cfg.fps)
    summary = {
        "video": str(out),
        "task": "i2v" if context is not None else "t2v",
        "image": cfg.image,
        "frames": int(video.shape[0]),
        "fps": cfg.fps,
        "blocks": [
            dict(b, block=k, latency_s=round(t, 4))
            for k, (b, t) in enumerate(zip(plan, times, strict=True))
        ],
        "denoising_steps": list(cfg.denoising_steps),
        "decode_s": round(decode_s, 4),
        "tiny_random": tiny,
        "transformer": info["transformer"],
        "vae": vae.model_id,
        "text_encoder": text.model_id,
    }
    atomic_write_json(out.with_suffix(".json"), summary)
    return summary
