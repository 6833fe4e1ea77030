"""The TSCM model's input contract (``Batch``), its velocity call and the block sampler.

Any training loop (base flow matching, a self-forcing distiller) builds a ``Batch`` and calls
``predict_velocity``; ``sample_block`` integrates one prediction block from noise with
Wan's shifted Euler schedule, history kept clean. Shapes: ``B`` batch, ``C`` latent channels
(48 for the Wan2.2 VAE), ``Fp`` / ``Fh`` prediction / history latent frames, ``H, W`` latent
height and width, ``L`` text tokens, ``D`` text width.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from model import flow


@dataclass
class Batch:
    r"""
    One step's model inputs: a prediction block to denoise and what conditions it.

    Args:
        task (`str`):
            `"t2v"` (no history) or `"i2v"` (clean history latents before the block).
        prediction (`torch.Tensor` of shape `(B, C, Fp, H, W)`):
            Clean prediction latents (the flow-matching target's data end).
        history (`torch.Tensor` of shape `(B, C, Fh, H, W)`, *optional*):
            Clean history latents, oldest first; `None` for T2V.
        history_frame_ids (`torch.Tensor` of shape `(Fh,)`, *optional*):
            Distance of each history frame from the prediction block (1 = just before).
        text (`torch.Tensor` of shape `(B, L, D)`):
            Event then action text embeddings, the cross-attention context.
        tiny_random (`bool`):
            Whether any sample came from tiny-random models or data (a provenance label).
        history_first_frame (`bool`, defaults to `False`):
            Whether `history[:, :, 0]` is the video's first frame (gets its own patch size).
    """

    task: str
    prediction: torch.Tensor  # (B, C, Fp, H, W)
    history: torch.Tensor | None  # (B, C, Fh, H, W) or None
    history_frame_ids: torch.Tensor | None  # (Fh,) distances, 1 = nearest
    text: torch.Tensor  # (B, L, D)
    tiny_random: bool
    history_first_frame: bool = False

    def keep_nearest(self, n: int) -> Batch:
        r"""
        The batch with only its `n` history frames nearest the prediction, ids kept true.

        Args:
            n (`int`):
                History frames to keep (the last `n` along `Fh`); a T2V batch is returned as is.
        """
        if self.history is None:
            return self
        return dataclasses.replace(
            self,
            history=self.history[:, :, -n:],  # (B, C, n, H, W)
            history_frame_ids=self.history_frame_ids[-n:],  # (n,)
            history_first_frame=self.history_first_frame and n >= self.history.shape[2],
        )

    def to(self, device: torch.device | str) -> Batch:
        r"""
        The batch with every tensor on `device`.

        Args:
            device (`torch.device` or `str`):
                Target device.
        """

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(
            self.task,
            self.prediction.to(device),
            mv(self.history),
            mv(self.history_frame_ids),
            self.text.to(device),
            self.tiny_random,
            self.history_first_frame,
        )


def predict_velocity(
    model: nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    batch: Batch,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    r"""
    The model's velocity for noisy prediction latents, conditioned on the batch.

    Args:
        model (`nn.Module`):
            A `TSCMTransformer` (or a DDP / FSDP wrapper of one).
        x (`torch.Tensor` of shape `(B, C, Fp, H, W)`):
            Noisy prediction latents at noise levels `sigma`.
        sigma (`torch.Tensor` of shape `(B,)`):
            Noise levels in [0, 1]; passed to the model as timesteps `1000 * sigma`.
        batch (`Batch`):
            Text, history and history flags (its `prediction` is not read).
        keep (`torch.Tensor` of shape `(K,)`, *optional*):
            Indices into the `Fh` history frames for the attention path (`select_history`);
            `None` passes every history frame.

    Returns:
        `torch.Tensor` of shape `(B, C, Fp, H, W)`: the predicted velocity `noise - x0`.
    """
    out = model(
        hidden_states=x,
        timestep=flow.sigma_to_timestep(sigma).to(x.device),  # (B,)
        encoder_hidden_states=batch.text,
        history=batch.history,
        history_frame_ids=batch.history_frame_ids,
        history_keep=keep,
        history_includes_first_frame=batch.history_first_frame,
        return_dict=False,
    )
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def sample_block(
    model: nn.Module, batch: Batch, steps: int, shift: float, gen: torch.Generator
) -> torch.Tensor:
    r"""
    Euler sampling of one prediction block from noise, the batch's history kept clean.

    Args:
        model (`nn.Module`):
            A `TSCMTransformer` (usually an EMA copy in eval mode).
        batch (`Batch`):
            Conditioning; `batch.prediction` gives only the shape and device of the block.
        steps (`int`):
            Euler steps (`steps + 1` sigmas from 1 to 0, shifted).
        shift (`float`):
            Wan's timestep shift of the sampling sigmas (`flow.sampling_sigmas`).
        gen (`torch.Generator`):
            CPU generator of the starting noise.

    Returns:
        `torch.Tensor` of shape `(B, C, Fp, H, W)`: the sampled prediction latents.
    """
    x = torch.randn(batch.prediction.shape, generator=gen).to(batch.prediction.device)
    sigmas = flow.sampling_sigmas(steps, shift)  # (steps + 1,)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = predict_velocity(model, x, s.expand(x.shape[0]), batch, None)  # (B, C, Fp, H, W)
        x = flow.euler_step(x, v.float(), s.item(), s_next.item())
    return x


# ---- few-step block generation (the self-forcing generator and the interactive sampler) ----


def few_step_sigmas(step_list: tuple[int, ...], shift: float, warp: bool = True) -> torch.Tensor:
    r"""
    The few-step schedule: the sigmas of a timestep list (Self-Forcing's
    ``denoising_step_list``), then 0.

    Args:
        step_list (`tuple[int, ...]`):
            Decreasing timesteps in (0, 1000], e.g. `(1000, 750, 500, 250)`.
        shift (`float`):
            Wan's timestep shift.
        warp (`bool`, defaults to `True`):
            Shift each `t / 1000` (Self-Forcing's `warp_denoising_step`: with shift 5,
            `[1000, 750, 500, 250]` becomes sigmas `[1, 0.9375, 0.8333, 0.625]`).

    Returns:
        `torch.Tensor` of shape `(len(step_list) + 1,)`: float32 sigmas ending with 0.
    """
    t = torch.tensor(step_list, dtype=torch.float64) / flow.NUM_TRAIN_TIMESTEPS
    if len(t) < 1 or not bool((t[:-1] > t[1:]).all()) or t.min() <= 0 or t.max() > 1:
        raise ValueError(f"denoising steps must decrease within (0, 1000], got {step_list}")
    s = flow.shift_sigma(t, shift) if warp else t
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()


def autocast(device: torch.device | str, mixed_precision: str):
    """bf16 autocast on CUDA when asked, else a no-op context (CPU runs in float32)."""
    if torch.device(device).type == "cuda" and mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def history_batch(
    context: torch.Tensor | None,
    blocks: list[torch.Tensor],
    text: torch.Tensor,
    shape: tuple[int, ...],
    device: torch.device | str,
    tiny_random: bool,
) -> Batch:
    r"""
    The `Batch` of the next block: history = the context frames then earlier blocks, detached.

    Args:
        context (`torch.Tensor` of shape `(B, C, Fc, H, W)`, *optional*):
            Clean latents before the first block (I2V: the encoded image); `None` for T2V.
        blocks (`list[torch.Tensor]`):
            Earlier blocks' clean latents, each `(B, C, Fp, H, W)`, oldest first. They enter the
            history detached: no gradient reaches an earlier block through the history.
        text (`torch.Tensor` of shape `(B, L, D)`):
            This block's event + action embeddings.
        shape (`tuple[int, ...]`):
            The block's `(B, C, Fp, H, W)`.
        device (`torch.device` or `str`):
            Where the prediction lives.
        tiny_random (`bool`):
            Provenance label.

    Returns:
        `Batch`: `task` "t2v" while there is no history, else "i2v"; the oldest history frame is
        the video's first frame (a VAE first latent frame), so `history_first_frame` is set.
    """
    parts = ([context] if context is not None else []) + [b.detach() for b in blocks]
    history = torch.cat(parts, dim=2).detach() if parts else None  # (B, C, Fh, H, W)
    fh = 0 if history is None else history.shape[2]
    return Batch(
        task="i2v" if fh else "t2v",
        prediction=torch.empty(shape, device=device),  # shape and device only
        history=history,
        history_frame_ids=torch.arange(fh, 0, -1) if fh else None,
        text=text,
        tiny_random=tiny_random,
        history_first_frame=bool(fh),
    )


def denoise_few_step(
    model: nn.Module,
    batch: Batch,
    sigmas: torch.Tensor,
    gen: torch.Generator,
    *,
    exit_index: int | None = None,
    grad: bool = False,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    Self-Forcing's few-step denoising of one block: predict x0, re-noise it with fresh noise to
    the next sigma, ..., and stop at the exit step, whose x0 is the block.

    Args:
        model (`nn.Module`):
            The generator (a `TSCMTransformer` predicting velocity).
        batch (`Batch`):
            The block's conditioning (`history_batch`); `prediction` gives shape and device.
        sigmas (`torch.Tensor` of shape `(S + 1,)`):
            `few_step_sigmas`.
        gen (`torch.Generator`):
            CPU generator of the starting and re-noising noise.
        exit_index (`int`, *optional*):
            Step whose x0 is returned (0 .. S-1); `None` runs all `S` steps.
        grad (`bool`, defaults to `False`):
            Whether the exit step's forward records gradients. The steps before it never do.
        keep (`torch.Tensor`, *optional*):
            History indices for the attention path (`select_history`), `None` for all frames.

    Returns:
        `torch.Tensor` of shape `(B, C, Fp, H, W)`: the block's clean latents (float32).
    """
    steps = len(sigmas) - 1
    exit_index = steps - 1 if exit_index is None else exit_index
    if not 0 <= exit_index < steps:
        raise ValueError(f"exit step {exit_index} outside 0..{steps - 1}")
    shape, device = batch.prediction.shape, batch.prediction.device
    x = torch.randn(shape, generator=gen).to(device)
    for i in range(exit_index + 1):
        s = sigmas[i].expand(shape[0])  # (B,)
        with torch.set_grad_enabled(grad and i == exit_index):
            v = predict_velocity(model, x, s, batch, keep)
            x0 = flow.predict_x0(x, v.float(), s.to(device))
        if i < exit_index:
            noise = torch.randn(shape, generator=gen).to(device)
            x = flow.add_noise(x0, noise, sigmas[i + 1].expand(shape[0]).to(device))
    return x0


def rollout(
    model: nn.Module,
    context: torch.Tensor | None,
    texts: list[torch.Tensor],
    block_shape: tuple[int, ...],
    sigmas: torch.Tensor,
    gen: torch.Generator,
    *,
    exit_index: int | list[int] | None = None,
    grad: bool = False,
    select: bool = True,
    tiny_random: bool = False,
    on_block=None,
) -> list[tuple[Batch, torch.Tensor, torch.Tensor | None]]:
    r"""
    Autoregressive few-step generation of `len(texts)` blocks, each conditioned through the
    TSCM history on the context and the model's own earlier (detached) outputs.

    Args:
        model (`nn.Module`):
            The generator.
        context (`torch.Tensor` of shape `(B, C, Fc, H, W)`, *optional*):
            Clean latents before the first block (I2V), `None` for T2V.
        texts (`list[torch.Tensor]`):
            Per block `(B, L, D)` event + action embeddings.
        block_shape (`tuple[int, ...]`):
            `(B, C, Fp, H, W)` of one block.
        sigmas (`torch.Tensor`):
            `few_step_sigmas`.
        gen (`torch.Generator`):
            CPU generator of every noise draw and the history sampling.
        exit_index (`int` or `list[int]`, *optional*):
            Exit step of every block (or one per block); `None`: all steps (inference).
        grad (`bool`, defaults to `False`):
            Record gradients at each block's exit step (the generator update).
        select (`bool`, defaults to `True`):
            TSCM temporal sampling of far history (`select_history`); `False` passes every frame.
        tiny_random (`bool`, defaults to `False`):
            Provenance label of the batches.
        on_block (`callable`, *optional*):
            Called as `on_block(k)` after block `k` (the sampler times blocks with it).

    Returns:
        `list[tuple[Batch, torch.Tensor, torch.Tensor | None]]`: per block its conditioning, its
        clean latents `(B, C, Fp, H, W)` and the history indices its attention path saw.
    """
    from model.tscm import select_history

    device = context.device if context is not None else texts[0].device
    exits = exit_index if isinstance(exit_index, list) else [exit_index] * len(texts)
    out: list[tuple[Batch, torch.Tensor, torch.Tensor | None]] = []
    for k, text in enumerate(texts):
        batch = history_batch(context, [o[1] for o in out], text, block_shape, device, tiny_random)
        keep = None
        if select and batch.history is not None:
            keep = select_history(batch.history.shape[2], generator=gen)
        x0 = denoise_few_step(model, batch, sigmas, gen, exit_index=exits[k], grad=grad, keep=keep)
        out.append((batch, x0, keep))
        if on_block is not None:
            on_block(k)
    return out
