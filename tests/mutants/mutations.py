"""Kept list of plausible one-line bugs that ``make mutants`` plants one at a time.

Why a kept list instead of mutmut or cosmic-ray: those generate thousands of mutants and
take hours on a 2-core machine; these are the bugs a reviewer would actually miss (the
planted bugs of issue 10 among them), and each names the test files that must catch it.

``original`` must occur exactly once in ``file`` (``tests/mutants/run.py`` refuses a stale
snippet); ``tests`` are pytest paths or node ids, the new targeted files first so that
``pytest -x`` stops early. A snippet may span lines when one bug touches two adjacent lines.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutation(NamedTuple):
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]
    description: str
    needs: str = ""  # "cuda": only observable on a CUDA device


# Test files written for issue 10: ``run.py --old-tests`` drops them to measure the before
# (the latent-stream test was strengthened in place, so it stays).
NEW_TESTS = (
    "tests/test_tscm_reference.py",
    "tests/test_training_knobs.py",
    "tests/test_verify_catches.py",
)

TSCM = ("tests/test_tscm_reference.py", "tests/test_tscm.py", "tests/test_training.py")
PATCH = ("tests/test_tscm_reference.py", "tests/test_patchify.py", "tests/test_tscm.py")
LINEAR = ("tests/test_tscm_reference.py", "tests/test_linear_attention.py", "tests/test_tscm.py")
TRAIN = ("tests/test_training_knobs.py", "tests/test_training.py")
VERIFY = ("tests/test_verify_catches.py", "tests/test_shards.py")
STREAM = (
    "tests/test_encode_latents.py::test_latent_stream_restores_at_its_position_without_replay",
)

M = Mutation
MUTATIONS: list[Mutation] = [
    # ---- model/tscm.py ---------------------------------------------------------------------
    M("history-noisy-t", "model/tscm.py",
      "timestep = torch.stack([torch.zeros_like(timestep), timestep], dim=1).flatten()",
      "timestep = torch.stack([timestep, timestep], dim=1).flatten()",
      TSCM, "history tokens get the noisy timestep instead of t = 0"),
    M("out-mod-history-temb", "model/tscm.py",
      "temb = temb[:, 1]  # (B, D)",
      "temb = temb[:, 0]  # (B, D)",
      TSCM, "output layer modulated with the history's embedding"),
    M("pred-rope-hw-swapped", "model/tscm.py",
      "pos = grid_positions(torch.arange(grid[0]), grid[1:], (1.0, 1.0))",
      "pos = grid_positions(torch.arange(grid[0]), (grid[2], grid[1]), (1.0, 1.0))",
      TSCM, "prediction RoPE grid with h and w swapped (same on square grids)"),
    M("pred-rope-axes-swapped", "model/tscm.py",
      "    return rope_cos_sin(pos, head_dim, theta, device)",
      "    return rope_cos_sin(pos[:, [0, 2, 1]], head_dim, theta, device)",
      TSCM, "prediction RoPE h and w coordinates exchanged"),
    M("segment-history-gets-pred-mod", "model/tscm.py",
      "hist = fn(x[:, :num_history], *(p[:, :1] for p in params))",
      "hist = fn(x[:, :num_history], *(p[:, 1:] for p in params))",
      TSCM, "history segment modulated with the prediction's parameters"),
    M("block-shift-scale-swapped", "model/tscm.py",
      "shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods",
      "scale_msa, shift_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods",
      TSCM, "block unpacks shift and scale in the wrong order"),
    M("ffn-gate-from-attn", "model/tscm.py",
      "hidden_states.float() + _per_segment(_gate, ff_output.float(), n, c_gate_msa)",
      "hidden_states.float() + _per_segment(_gate, ff_output.float(), n, gate_msa)",
      TSCM, "feed-forward gated with the attention gate"),
    M("fusion-update-dropped", "model/tscm.py",
      "hidden_states = torch.cat([hidden_states[:, :n], pred + update], dim=1)",
      "hidden_states = torch.cat([hidden_states[:, :n], pred], dim=1)",
      TSCM, "channel-fusion update computed but not added"),
    M("keep-first-flag-unchecked", "model/tscm.py",
      "first = first and int(attn_ids.max()) == int(history_frame_ids.max())",
      "first = first",
      TSCM, "history_keep drops the first frame but it keeps the first-frame rate"),
    M("channel-positions-sign", "model/tscm.py",
      "t = -frame_ids.to(torch.float64)  # (Fh,)",
      "t = frame_ids.to(torch.float64)  # (Fh,)",
      TSCM, "channel tokens placed in the future (positive time)"),
    M("rope-layout-repeat", "model/tscm.py",
      "torch.outer(positions[:, axis].to(torch.float64), inv).repeat_interleave(2, 1)",
      "torch.outer(positions[:, axis].to(torch.float64), inv).repeat(1, 2)",
      TSCM, "RoPE angles laid out half-split instead of interleaved pairs"),
    M("no-block-checkpointing", "model/tscm.py",
      "if torch.is_grad_enabled() and self.gradient_checkpointing:",
      "if False and self.gradient_checkpointing:",
      ("tests/test_training_knobs.py", "tests/test_tscm.py"),
      "forward ignores gradient checkpointing"),
    # ---- model/patchify.py -----------------------------------------------------------------
    M("history-time-positive", "model/patchify.py",
      "t = -torch.tensor([ids[i] for i in frames], dtype=torch.float64)",
      "t = torch.tensor([ids[i] for i in frames], dtype=torch.float64)",
      PATCH, "history frames placed after the prediction in time"),
    M("no-kernel-scale", "model/patchify.py",
      "return (resized * scale).to(weight.dtype)",
      "return resized.to(weight.dtype)",
      PATCH, "coarse kernels not rescaled (sum not preserved)"),
    M("corner-positions", "model/patchify.py",
      "return torch.arange(n, dtype=torch.float64) * ratio + (ratio - 1) / 2",
      "return torch.arange(n, dtype=torch.float64) * ratio",
      PATCH, "coarse patches at their corner instead of their centre"),
    M("zero-padding", "model/patchify.py",
      'return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")',
      'return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="constant")',
      PATCH, "zero padding instead of replicate"),
    M("band-bound-exclusive", "model/patchify.py",
      "band = next((i for i, b in enumerate(bounds) if d <= b), len(bounds))",
      "band = next((i for i, b in enumerate(bounds) if d < b), len(bounds))",
      PATCH, "distance bounds exclusive (off by one band)"),
    M("grid-xy-indexing", "model/patchify.py",
      'tt, hh, ww = torch.meshgrid(t.to(torch.float64).cpu(), h, w, indexing="ij")',
      'tt, hh, ww = torch.meshgrid(t.to(torch.float64).cpu(), h, w, indexing="xy")',
      PATCH, "positions built with xy meshgrid (h/w order wrong)"),
    # ---- model/linear_attention.py ---------------------------------------------------------
    M("rope-rotation-sign", "model/linear_attention.py",
      "out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)",
      "out = torch.stack([x1 * c + x2 * s, x2 * c - x1 * s], dim=-1).flatten(-2)",
      LINEAR, "pairs rotated by minus the angle"),
    M("den-uses-rotated", "model/linear_attention.py",
      'den = torch.einsum("bnhd,bhd->bnh", q, k.sum(dim=1)) + eps',
      'den = torch.einsum("bnhd,bhd->bnh", qr, kr.sum(dim=1)) + eps',
      LINEAR, "denominator from rotated features (not positive)"),
    M("no-query-feature-map", "model/linear_attention.py",
      "q = F.relu(self.to_q(h)).unflatten(-1, (self.heads, -1))",
      "q = self.to_q(h).unflatten(-1, (self.heads, -1))",
      LINEAR, "queries without the ReLU feature map"),
    M("up-not-zeroed", "model/linear_attention.py",
      "nn.init.zeros_(self.up.weight)",
      "pass",
      LINEAR, "fusion up projection not zero-initialised (model != Wan at init)"),
    M("rope-sin-odd-slice", "model/linear_attention.py",
      "c, s = cos[..., 0::2], sin[..., 1::2]",
      "c, s = cos[..., 0::2], sin[..., 0::2]",
      LINEAR, "sin read from the even slots"),
    # ---- training/train_base.py and training/ema.py ---------------------------------------
    M("warmup-ignored", "training/train_base.py",
      "warm = max(cfg.warmup_steps, 1)",
      "warm = 1",
      TRAIN, "learning-rate warm-up ignored"),
    M("scheduler-not-restored", "training/train_base.py",
      'self.sched.load_state_dict(state["scheduler"])',
      "pass",
      TRAIN, "LR scheduler not restored on resume"),
    M("scheduler-never-steps", "training/train_base.py",
      "            self.sched.step()\n",
      "",
      TRAIN, "scheduler never stepped"),
    M("checkpointing-off", "training/train_base.py",
      "    if cfg.gradient_checkpointing:",
      "    if False:",
      TRAIN, "gradient checkpointing switched off"),
    M("autocast-removed", "training/train_base.py",
      'if x0.device.type == "cuda" and cfg.mixed_precision == "bf16"',
      "if False",
      ("tests/test_training_knobs.py",), "bf16 autocast removed", needs="cuda"),
    M("val-without-ema", "training/train_base.py",
      "self.ema.copy_to(model)",
      "pass",
      TRAIN, "validation with the raw weights instead of the EMA"),
    M("clip-disabled", "training/train_base.py",
      "nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)",
      'nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))',
      TRAIN, "gradient clipping disabled (norm still logged)"),
    M("ema-never-updated", "training/train_base.py",
      "self.ema.update(distributed.unwrap(self.model))",
      "pass",
      TRAIN, "EMA never updated"),
    M("ema-not-restored", "training/train_base.py",
      'self.ema.load_state_dict({"decay": state["ema"]["decay"], "shadow": shadow})',
      "pass",
      TRAIN, "EMA not restored on resume"),
    M("rng-not-restored", "training/train_base.py",
      'set_rng_state(state["rng"], self.noise_gen)',
      "pass",
      TRAIN, "noise RNG not restored on resume"),
    M("grads-accumulate", "training/train_base.py",
      "self.opt.zero_grad(set_to_none=True)",
      "pass",
      TRAIN, "gradients never zeroed (accumulate across steps)"),
    M("ema-decay-inverted", "training/ema.py",
      "self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)",
      "self.shadow[n].lerp_(p.detach().float(), self.decay)",
      TRAIN, "EMA weights decay and (1 - decay) swapped"),
    # ---- curation/shards/verify.py ---------------------------------------------------------
    M("verify-no-fps", "curation/shards/verify.py",
      'if abs(fps - meta["fps"]) > 0.01 * meta["fps"]:',
      "if False:",
      VERIFY, "verify skips the fps check"),
    M("verify-no-decode", "curation/shards/verify.py",
      "return problems + check_video(members[kind.video], meta, decode)",
      "return problems",
      VERIFY, "verify skips every decoding check"),
    M("verify-no-size", "curation/shards/verify.py",
      "if len(data) != size:",
      "if False:",
      VERIFY, "verify skips the size check (falls through to sha256)"),
    M("verify-no-resolution", "curation/shards/verify.py",
      'if (w, h) != (meta["width"], meta["height"]):',
      "if False:",
      VERIFY, "verify skips the resolution check"),
    M("verify-frames-only-too-many", "curation/shards/verify.py",
      'if n != meta["frames"]:',
      'if n > meta["frames"]:',
      VERIFY, "verify flags only too many frames"),
    M("verify-first-frame-only", "curation/shards/verify.py",
      "ends = sorted({0, n - 1})",
      "ends = [0]",
      VERIFY, "verify decodes only the first frame (misses a cut-off stream)"),
    # ---- training/mixture.py: latent stream restore --------------------------------------
    M("stream-replays", "training/mixture.py",
      "        self._it = self._start(position)\n"
      '        if not self.positioned or (position is None and state["consumed"]):',
      "        self._it = self._start(None)\n"
      "        if True:",
      STREAM, "a positioned stream restores by replaying from the start"),
]  # fmt: skip

# Mutants no test can kill because they do not change behaviour, with the reason.
EQUIVALENT: dict[str, str] = {
    "rope-sin-odd-slice": (
        "rope tables repeat each angle over a pair (repeat_interleave), so the even and odd "
        "slots of sin hold the same values"
    ),
}
