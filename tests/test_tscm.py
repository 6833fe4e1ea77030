"""TSCMTransformer (tiny-random config, CPU): equals plain Wan at init, history paths, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from hypothesis import given, settings
from hypothesis import strategies as st

from model.configs import TSCM_FIELDS, WAN_FIELDS, config_names, transformer_config, wan_kwargs
from model.tscm import TSCMBlock, TSCMTransformer, rope_cos_sin, select_history


@pytest.fixture(scope="module")
def models() -> tuple[TSCMTransformer, WanTransformer3DModel]:
    torch.manual_seed(0)
    tscm = TSCMTransformer.from_config_name("tiny").eval()
    wan = WanTransformer3DModel(**wan_kwargs(transformer_config("tiny"))).eval()
    result = wan.load_state_dict(tscm.state_dict(), strict=False)
    assert not result.missing_keys  # every Wan parameter name is unchanged
    return tscm, wan


def _inputs(batch=2, frames=3, h=16, w=16, hist=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 48, frames, h, w, generator=g)
    t = torch.tensor([120.0, 870.0][:batch])
    text = torch.randn(batch, 9, 32, generator=g)
    history = torch.randn(batch, 48, hist, h, w, generator=g) if hist else None
    ids = torch.arange(hist, 0, -1) if hist else None
    return x, t, text, history, ids


def test_configs_have_wan_and_tscm_fields():
    assert set(config_names()) >= {"tiny", "wan22-5b"}
    big = transformer_config("wan22-5b")
    assert big["num_attention_heads"] * big["attention_head_dim"] == 3072
    assert (big["ffn_dim"], big["num_layers"], big["in_channels"], big["text_dim"]) == (
        14336,
        30,
        48,
        4096,
    )
    tiny = transformer_config("tiny")
    assert set(tiny) == set(WAN_FIELDS) | set(TSCM_FIELDS)
    assert (tiny["text_dim"], tiny["in_channels"]) == (32, 48)
    with pytest.raises(KeyError):
        transformer_config("nope")


def test_wan22_5b_size_on_meta_device():
    with torch.device("meta"):
        tscm = TSCMTransformer.from_config_name("wan22-5b")
        wan = WanTransformer3DModel(**wan_kwargs(transformer_config("wan22-5b")))
    n_wan = sum(p.numel() for p in wan.parameters())
    n_tscm = sum(p.numel() for p in tscm.parameters())
    assert 4.8e9 < n_wan < 5.2e9
    assert 0 < n_tscm - n_wan < 0.01 * n_wan  # the TSCM branches are small


def test_no_history_equals_plain_wan(models):
    tscm, wan = models
    x, t, text, _, _ = _inputs()
    with torch.no_grad():
        ours = tscm(x, t, text)[0]
        ref = wan(x, t, text, return_dict=False)[0]
    assert ours.shape == x.shape
    assert torch.allclose(ours, ref, atol=1e-6)


def test_rope_tables_match_wan_on_the_integer_grid(models):
    tscm, _ = models
    x = torch.zeros(1, 48, 3, 8, 12)
    cos, sin = tscm.rope(x)
    f, h, w = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(6), indexing="ij")
    pos = torch.stack([f, h, w], -1).reshape(-1, 3).double()
    ours = rope_cos_sin(pos, tscm.config.attention_head_dim)
    assert torch.equal(ours[0], cos) and torch.equal(ours[1], sin)


def test_per_segment_modulation_equals_wan_per_token_timesteps():
    """Wan2.2 TI2V per-token temb (B, S, 6, D) == our [history, prediction] segments."""
    torch.manual_seed(0)
    block = TSCMBlock(64, 128, 2, "rms_norm_across_heads", True, 1e-6, None, 0, 1).eval()
    ref = WanTransformerBlock(64, 128, 2, "rms_norm_across_heads", True, 1e-6, None).eval()
    ref.load_state_dict(block.state_dict())
    nh, np_ = 5, 7
    x, text = torch.randn(2, nh + np_, 64), torch.randn(2, 4, 64)
    temb = torch.randn(2, 2, 6, 64)  # [history, prediction]
    per_token = torch.cat(
        [temb[:, :1].expand(-1, nh, -1, -1), temb[:, 1:].expand(-1, np_, -1, -1)], 1
    )
    rope = rope_cos_sin(torch.randn(nh + np_, 3).double(), 32)
    with torch.no_grad():
        ours = block(x, text, temb, rope, num_history=nh)
        theirs = ref(x, text, per_token, rope)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_history_changes_prediction_and_fusion_is_zero_at_init(models):
    tscm, _ = models
    x, t, text, history, ids = _inputs(hist=12)
    with torch.no_grad():
        with_hist = tscm(x, t, text, history=history, history_frame_ids=ids)[0]
        other = tscm(x, t, text, history=history + 1.0, history_frame_ids=ids)[0]
        without = tscm(x, t, text)[0]
        fusions = [b.channel_fusion for b in tscm.blocks]
        for b in tscm.blocks:
            b.channel_fusion = None
        try:
            no_fusion = tscm(x, t, text, history=history, history_frame_ids=ids)[0]
        finally:
            for b, f in zip(tscm.blocks, fusions, strict=True):
                b.channel_fusion = f
    assert with_hist.shape == x.shape  # prediction tokens only
    assert not torch.allclose(with_hist, without, atol=1e-4)  # history reaches the prediction
    assert not torch.allclose(with_hist, other, atol=1e-4)
    assert torch.equal(with_hist, no_fusion)  # fusion branch adds exactly zero at init


def test_history_token_counts_follow_the_schedule(models):
    tscm, _ = models
    history = torch.randn(1, 48, 5, 16, 16)
    ids = torch.tensor([20, 7, 3, 2, 1])
    tokens, pos = tscm._temporal_spatial_tokens(history, ids, True)
    # id 20 is the oldest (first frame): (1,2,2) -> 64; 7: (1,8,8) -> 4; 3: (1,4,4) -> 16; 2, 1: 64
    assert tokens.shape == (1, 64 * 3 + 4 + 16, 64)
    assert pos[:, 0].max() == -1 and pos[:, 0].min() == -20
    # when the oldest passed frame is not the video's first, it gets its band's rate (1,8,8)
    later, _ = tscm._temporal_spatial_tokens(history, ids, False)
    assert later.shape == (1, 64 * 2 + 4 + 4 + 16, 64)
    z, zpos = tscm._channel_tokens(history, ids, 1, "cpu")
    # 5 frames -> one group of 8 (padded), (4,4) spatial -> 4x4 tokens of 32 channels
    assert z.shape == (1, 16, 32)
    assert torch.allclose(zpos[:, 0], torch.full((16,), -33 / 5, dtype=torch.float64))


def test_history_keep_limits_attention_tokens_but_not_channel_path(models):
    tscm, _ = models
    x, t, text, history, ids = _inputs(batch=1, hist=10)
    keep = torch.tensor([0, 8, 9])
    dropped = history.clone()
    dropped[:, :, 4] += 3.0  # a frame history_keep leaves out of the attention

    def run(model, hist, **kw):
        with torch.no_grad():
            return model(x, t, text, history=hist, history_frame_ids=ids, **kw)[0]

    def run_kept(model):
        with torch.no_grad():
            return model(x, t, text, history=history[:, :, keep], history_frame_ids=ids[keep])[0]

    # fusion at its zero init: only attention counts, and it sees only the kept frames
    a = run(tscm, history, history_keep=keep)
    torch.testing.assert_close(a, run_kept(tscm))
    torch.testing.assert_close(a, run(tscm, dropped, history_keep=keep))
    # random fusion output: the channel path sees every passed frame, dropped ones included
    fused = copy.deepcopy(tscm)
    torch.manual_seed(1)
    for block in fused.blocks:
        torch.nn.init.normal_(block.channel_fusion.up.weight, std=0.5)
    a = run(fused, history, history_keep=keep)
    assert not torch.allclose(a, run_kept(fused), atol=1e-4)
    assert not torch.allclose(a, run(fused, dropped, history_keep=keep), atol=1e-4)


def test_first_frame_rate_only_when_the_history_starts_at_the_video_start(models):
    tscm, _ = models
    x, t, text, history, ids = _inputs(batch=1, hist=4)
    with torch.no_grad():
        first = tscm(x, t, text, history=history, history_frame_ids=ids)[0]
        later = tscm(
            x, t, text, history=history, history_frame_ids=ids, history_includes_first_frame=False
        )[0]
        same = tscm(x, t, text, history, ids, history_includes_first_frame=True)[0]
    assert torch.equal(first, same)  # default: the oldest passed frame is the first frame
    assert not torch.allclose(first, later, atol=1e-5)


def test_gradients_reach_every_parameter_and_checkpointing_matches():
    torch.manual_seed(0)
    model = TSCMTransformer.from_config_name("tiny")
    for block in model.blocks:  # leave the identity init so fusion parameters get gradients
        torch.nn.init.normal_(block.channel_fusion.up.weight, std=0.02)
    x, t, text, history, ids = _inputs(batch=1, frames=2, hist=9)

    def grads():
        model.zero_grad()
        out = model(x, t, text, history=history, history_frame_ids=ids)[0]
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    missing = [
        n for n, p in model.named_parameters() if n not in plain or plain[n].abs().sum() == 0
    ]
    assert missing == []
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    model.disable_gradient_checkpointing()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_forward_and_backward(models):
    tscm, _ = models
    x, t, text, history, ids = _inputs(batch=1, hist=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tscm(x.requires_grad_(True), t, text, history=history, history_frame_ids=ids)[0]
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all() and torch.isfinite(x.grad).all()
    tscm.zero_grad()


def test_bad_history_arguments_raise(models):
    tscm, _ = models
    x, t, text, history, ids = _inputs(hist=3)
    with pytest.raises(ValueError, match="history_frame_ids"):
        tscm(x, t, text, history=history)
    with pytest.raises(ValueError, match="spatial"):
        tscm(x, t, text, history=history[..., :8], history_frame_ids=ids)
    with pytest.raises(ValueError, match="shape"):
        tscm(x, t, text, history=history, history_frame_ids=ids[:2])


def test_from_pretrained_loads_plain_wan_with_tscm_keys_as_no_ops(tmp_path, models):
    _, wan = models
    wan.save_pretrained(tmp_path / "transformer")
    model = TSCMTransformer.from_pretrained(
        tmp_path,
        subfolder="transformer",
        low_cpu_mem_usage=False,  # diffusers options are accepted and mean nothing here
        local_files_only=True,
        linear_channels=32,
        linear_heads=1,
    )
    x, t, text, history, ids = _inputs(hist=5)
    with torch.no_grad():
        assert torch.allclose(
            model(x, t, text)[0], wan(x, t, text, return_dict=False)[0], atol=1e-6
        )
        assert torch.isfinite(model(x, t, text, history=history, history_frame_ids=ids)[0]).all()
    assert all(
        torch.equal(b.channel_fusion.up.weight, torch.zeros_like(b.channel_fusion.up.weight))
        for b in model.blocks
    )
    # a saved TSCM checkpoint round-trips with every key, in bf16 with Wan's fp32 modules kept
    for block in model.blocks:
        torch.nn.init.normal_(block.channel_fusion.up.weight)
    model.save_pretrained(tmp_path / "tscm")
    back = TSCMTransformer.from_pretrained(tmp_path / "tscm", torch_dtype=torch.bfloat16)
    assert back.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert back.blocks[0].scale_shift_table.dtype == torch.float32
    torch.testing.assert_close(
        back.blocks[1].channel_fusion.up.weight.float(),
        model.blocks[1].channel_fusion.up.weight,
        rtol=1e-2,
        atol=1e-2,
    )
    with pytest.raises(TypeError, match="TSCM fields"):
        TSCMTransformer.from_pretrained(tmp_path / "tscm", num_layers=3)


@settings(max_examples=30, deadline=None)
@given(frames=st.integers(0, 400), every=st.sampled_from([8, 32]), seed=st.integers(0, 99))
def test_select_history_keeps_first_recent_and_one_per_window(frames, every, seed):
    idx = select_history(
        frames, torch.Generator().manual_seed(seed), sample_every=every, keep_recent=6
    )
    kept = idx.tolist()
    assert kept == sorted(set(kept)) and all(0 <= i < frames for i in kept)
    if frames == 0:
        return
    assert 0 in kept and set(range(max(frames - 6, 0), frames)) <= set(kept)
    far = [i for i in kept if 0 < i < frames - 6]
    n_far = max(frames - 7, 0)
    assert len(far) == -(-n_far // every)  # one per window of `every` far frames
    same = select_history(frames, torch.Generator().manual_seed(seed), sample_every=every)
    assert torch.equal(idx, same)


def test_cached_prediction_rope_gives_identical_outputs(models, monkeypatch):
    """The prediction-grid RoPE cache changes nothing: with history and a non-zero fusion
    branch, outputs equal those of a forward that rebuilds every table; a repeat hits it."""
    import model.tscm as tscm_module

    tscm = copy.deepcopy(models[0])
    torch.manual_seed(2)
    for block in tscm.blocks:
        torch.nn.init.normal_(block.channel_fusion.up.weight, std=0.1)  # linear attention counts
    x, t, text, history, ids = _inputs(batch=1, hist=5)

    def run():
        with torch.no_grad():
            return tscm(x, t, text, history=history, history_frame_ids=ids)[0]

    tscm_module.prediction_rope.cache_clear()
    cached, again = run(), run()
    assert tscm_module.prediction_rope.cache_info().hits >= 2  # attention and fusion tables
    monkeypatch.setattr(tscm_module, "prediction_rope", tscm_module.prediction_rope.__wrapped__)
    assert torch.equal(cached, again) and torch.equal(cached, run())


def test_diffusers_wan_internals_tscm_relies_on(models):
    """TSCMTransformer / TSCMBlock re-implement Wan's forward on diffusers internals (not its
    public API), read from diffusers 0.35 - 0.42 (pyproject bounds ``diffusers>=0.35,<0.43``).
    On a diffusers upgrade, re-check model/tscm.py against the new
    diffusers/models/transformers/transformer_wan.py, then move the bound."""
    import inspect

    import diffusers
    from diffusers.models.modeling_outputs import Transformer2DModelOutput  # noqa: F401
    from diffusers.models.modeling_utils import no_init_weights  # noqa: F401

    recheck = (
        f"diffusers {diffusers.__version__}: Wan internals changed; re-check "
        "TSCMTransformer.__init__/forward and TSCMBlock.forward in model/tscm.py against "
        "diffusers' transformer_wan.py before moving the diffusers bound in pyproject.toml"
    )
    tscm, wan = models
    cfg = transformer_config("tiny")
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    p = tuple(cfg["patch_size"])
    # constructor: TSCM passes every Wan kwarg by name and builds blocks positionally
    wan_init = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
    assert set(WAN_FIELDS) <= wan_init, (sorted(set(WAN_FIELDS) - wan_init), recheck)
    block_init = list(inspect.signature(WanTransformerBlock.__init__).parameters)[1:8]
    assert block_init == [
        "dim", "ffn_dim", "num_heads", "qk_norm", "cross_attn_norm", "eps", "added_kv_proj_dim"
    ], (block_init, recheck)  # fmt: skip
    for model in (wan, tscm):
        # patchify of prediction tokens, reused (weights interpolated) for history
        pe = model.patch_embedding
        assert isinstance(pe, torch.nn.Conv3d), recheck
        assert pe.weight.shape == (d, cfg["in_channels"], *p) and pe.stride == p, recheck
        # output layer: (1, 2, D) shift/scale table, affine-free fp32 LayerNorm, projection
        assert model.scale_shift_table.shape == (1, 2, d), recheck
        assert isinstance(model.norm_out, torch.nn.LayerNorm), recheck
        assert tuple(model.norm_out.normalized_shape) == (d,), recheck
        assert model.norm_out.weight is None, recheck
        assert model.proj_out.in_features == d, recheck
        assert model.proj_out.out_features == cfg["out_channels"] * p[0] * p[1] * p[2], recheck
        assert isinstance(model.blocks, torch.nn.ModuleList), recheck
        assert hasattr(model, "gradient_checkpointing"), recheck
        keep = set(model._keep_in_fp32_modules)
        assert {"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"} <= keep, recheck
    # per-token timesteps (Wan2.2 TI2V): condition_embedder(t, text, image, timestep_seq_len)
    emb = wan.condition_embedder
    args = list(inspect.signature(emb.forward).parameters)
    assert args[:3] == ["timestep", "encoder_hidden_states", "encoder_hidden_states_image"], recheck
    assert "timestep_seq_len" in args, recheck
    with torch.no_grad():
        t = torch.tensor([0.0, 5.0, 0.0, 7.0])  # (B * 2,): [history, prediction] per sample
        out = emb(t, torch.randn(2, 3, cfg["text_dim"]), None, timestep_seq_len=2)
    assert len(out) == 4, recheck
    temb, proj, text, image = out
    assert temb.shape == (2, 2, d) and proj.shape == (2, 2, 6 * d), recheck
    assert text.shape == (2, 3, d) and image is None, recheck
    # blocks: a (1, 6, D) modulation table, norms and attentions called positionally
    block = wan.blocks[0]
    assert block.scale_shift_table.shape == (1, 6, d), recheck
    for name in ("norm1", "norm2", "norm3", "attn1", "attn2", "ffn"):
        assert isinstance(getattr(block, name, None), torch.nn.Module), (name, recheck)
    attn_args = list(inspect.signature(block.attn1.forward).parameters)[:4]
    assert attn_args == [
        "hidden_states", "encoder_hidden_states", "attention_mask", "rotary_emb"
    ], (attn_args, recheck)  # fmt: skip
    # rotary embedding as a (cos, sin) pair of (1, N, 1, head_dim) tables (rope_cos_sin)
    cos_sin = wan.rope(torch.zeros(1, cfg["in_channels"], 2, 4, 6))
    assert isinstance(cos_sin, tuple) and len(cos_sin) == 2, recheck
    assert all(t.shape == (1, 2 * 2 * 3, 1, cfg["attention_head_dim"]) for t in cos_sin), recheck
