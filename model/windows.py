"""Windows and latents: how many pixel frames a window holds so latents align, and the
encoding of windows into latent samples (VAE + text encoder).

Both training (on the fly) and the encode-latents stage (ahead of time) make latent samples
here, so the two give the same latents for the same window. ``geometry`` is any config
with ``height``, ``width``, ``pred_latent_frames`` and ``max_history_latent_frames`` (the
training config or the encode-latents config).

The Wan2.2 VAE maps ``1 + 4k`` pixel frames to ``1 + k`` latent frames (temporal stride 4).
A T2V window is ``1 + 4(Fp - 1)`` prediction frames; an I2V window is up to
``1 + 4(Fh - 1)`` history frames then ``4 Fp`` prediction frames.
"""

from __future__ import annotations

import numpy as np
import torch

from model.vae import STRIDE


def window_frames(cfg, task: str) -> tuple[int, int]:
    """(history, prediction) pixel frames to ask the reader for, so that latents align:
    T2V 1 + 4(Fp - 1) frames -> Fp latent frames; I2V up to 1 + 4(Fh - 1) history frames
    -> Fh latent frames (Fh = ``max_history_latent_frames``; the reader gives fewer when the
    prediction block sits early in the clip), then 4 Fp frames -> Fp latent frames."""
    ft = STRIDE[0]
    if task == "t2v":
        return 0, 1 + ft * (cfg.pred_latent_frames - 1)
    return 1 + ft * (cfg.max_history_latent_frames - 1), ft * cfg.pred_latent_frames


def min_clip_frames(cfg, task: str) -> int:
    """Fewest clip frames that hold one ``task`` window (I2V: at least one history frame)."""
    _, pred = window_frames(cfg, task)
    return pred + (task == "i2v")


def trim_window(video, history_frames: int, cfg):
    """Drop the oldest history frames so the window is 1 + 4k history + aligned prediction.

    ``video`` is (T, H, W, 3). Returns (video, kept history frames). Raises ValueError for a
    window that cannot align.
    """
    ft = STRIDE[0]
    pred = len(video) - history_frames
    if history_frames == 0:
        ok = pred == 1 + ft * (cfg.pred_latent_frames - 1)
        keep = 0
    else:
        ok = pred == ft * cfg.pred_latent_frames
        keep = 1 + ft * ((history_frames - 1) // ft)
    if not ok:
        task = "i2v" if history_frames else "t2v"
        raise ValueError(
            f"window of {history_frames}+{pred} frames does not fit {window_frames(cfg, task)}"
        )
    return video[history_frames - keep :], keep


def encode_windows(windows: list[dict], vae, text, cfg) -> list[dict]:
    """Encode raw windows (the shard reader's items) into latent samples.

    A window of ``history_frames`` + prediction pixel frames is trimmed at its start to
    1 + 4k history frames, so history and prediction fall on whole latent frames; the
    prediction block is then the last ``pred_latent_frames`` latent frames. The reader
    already resized (cover, centre crop) to the config's size.

    Args:
        windows: reader items (``video`` uint8 (T, H, W, 3), ``history_frames``, ``keys``,
            ``mouse``, ``event_text``, ``task``, ``source``, ``tiny_random``).
        vae: a VAE backend (``encode`` uint8 (B, T, H, W, 3) -> (B, 48, F, h, w)).
        text: a text-encoder backend (``encode_events``).
        cfg: the geometry (see the module docstring).

    Returns one dict per window: ``latents`` (48, F, h, w), ``event_emb`` (Le, D),
    ``history_latent_frames``, ``history_starts_at_first_frame``, ``keys``/``mouse`` int64
    per kept pixel frame, ``task``, ``source``, ``tiny_random``.
    """
    events = text.encode_events([w["event_text"] for w in windows]).cpu()
    asked, _ = window_frames(cfg, "i2v")
    out = []
    for j, s in enumerate(windows):
        video = torch.as_tensor(np.asarray(s["video"]))
        if tuple(video.shape[1:3]) != (cfg.height, cfg.width):
            raise ValueError(
                f"{s['__key__']}: frames {tuple(video.shape[1:3])}, config size "
                f"{(cfg.height, cfg.width)}: read shards with size=(H, W)"
            )
        history_frames = int(s["history_frames"])
        video, hist = trim_window(video, history_frames, cfg)
        keep = len(video)
        # the reader gives fewer history frames than asked only at the clip start
        starts_at_clip_start = 0 < hist == history_frames < asked
        out.append(
            {
                "__key__": s["__key__"],
                "latents": vae.encode(video[None]).cpu()[0],  # (48, F, h, w)
                "history_latent_frames": 0 if hist == 0 else 1 + (hist - 1) // STRIDE[0],
                "history_starts_at_first_frame": bool(
                    s.get("history_starts_at_first_frame", starts_at_clip_start)
                ),
                "event_emb": events[j],  # (Le, D)
                "keys": np.asarray(s["keys"], dtype=np.int64)[-keep:],
                "mouse": np.asarray(s["mouse"], dtype=np.int64)[-keep:],
                "task": s["task"],
                "source": s["source"],
                "tiny_random": bool(s.get("tiny_random", False))
                or vae.tiny_random
                or text.tiny_random,
            }
        )
    return out
