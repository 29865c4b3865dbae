"""ClsAttention: the cls-row probe against the un-fused attention of the same forward pass."""

from __future__ import annotations

import pytest
import timm
import torch

import mixpro

TINY = dict(img_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=2, num_classes=5)
MODELS = {
    "vit": ("vit_tiny_patch16_224", dict(TINY, drop_path_rate=0.1, attn_drop_rate=0.2)),
    "vit_qknorm_reg": ("vit_tiny_patch16_224", dict(TINY, reg_tokens=4, qk_norm=True)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", TINY),
    "cait": ("cait_xxs24_224", dict(TINY, depth_token_only=2, attn_drop_rate=0.2)),
    # ConViT: gated positional attention first, then MHSA blocks where the cls token joins
    "convit": ("convit_tiny", dict(TINY, local_up_to_layer=1, attn_drop_rate=0.2)),
    "xcit": ("xcit_nano_12_p16_224", dict(img_size=64, patch_size=8, depth=1, embed_dim=32,
                                          num_heads=2, num_classes=5)),
}


def _last_attn(model):
    for name in ("blocks_token_only", "cls_attn_blocks", "blocks"):
        blocks = getattr(model, name, None)
        if blocks is not None:
            return blocks[-1].attn


def _make(key):
    torch.manual_seed(0)
    name, kw = MODELS[key]
    return timm.create_model(name, pretrained=False, **kw)


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("train", [True, False])
def test_probe_matches_unfused_reference_same_forward(key, train):
    model = _make(key)
    model.train(train)
    fused = [getattr(m, "fused_attn", None) for m in model.modules()]
    probe = mixpro.ClsAttention(model)
    attn = _last_attn(model)
    assert fused == [getattr(m, "fused_attn", None) for m in model.modules()], "probe un-fused"
    if hasattr(attn, "fused_attn"):  # ConViT's MHSA always passes its softmax to attn_drop
        assert attn.fused_attn
        attn.fused_attn = False  # only to build the reference in this same forward pass
    captured = {}
    hook = attn.attn_drop.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("p", inp[0].detach())
    )
    size = MODELS[key][1]["img_size"]
    x = torch.randn(3, 3, size, size)
    model(x)
    hook.remove()
    prefix = getattr(model, "num_prefix_tokens", 1) if key not in ("cait", "xcit") else 1
    ref = captured["p"][:, :, 0, prefix:].mean(1)
    got = probe.attention
    assert got.shape == ref.shape == (3, (x.shape[-1] // (8 if key == "xcit" else 4)) ** 2)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    probe.remove()


def test_probe_leaves_outputs_and_fusion_unchanged():
    model = _make("vit").eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    with mixpro.ClsAttention(model) as probe:
        after = model(x)
        assert probe.attention.shape == (2, 64)
    assert torch.equal(before, after)
    assert model.blocks[-1].attn.fused_attn


def test_probe_unwraps_data_parallel_and_needs_a_forward():
    model = _make("vit")
    probe = mixpro.ClsAttention(torch.nn.DataParallel(model))
    with pytest.raises(RuntimeError, match="forward"):
        _ = probe.attention
    model(torch.randn(2, 3, 32, 32))
    assert probe.attention.shape == (2, 64)


def test_probe_under_autocast_is_float32():
    model = _make("vit")
    probe = mixpro.ClsAttention(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 32, 32))
    a = probe.attention
    assert a.dtype == torch.float32 and torch.isfinite(a).all()


@pytest.mark.parametrize("name,kw", [
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=4, depths=(1, 1),
                                          embed_dim=16, num_heads=(1, 2))),
    ("resnet18", {}),
    ("vit_tiny_patch16_224", dict(TINY, global_pool="avg")),
    ("vit_tiny_patch16_224", dict(TINY, class_token=False, global_pool="avg")),
])
def test_models_without_cls_attention_raise_but_maskmix_works(name, kw):
    model = timm.create_model(name, pretrained=False, **{**kw, "num_classes": 5})
    with pytest.raises(mixpro.NoClsAttentionError, match="cls|supported|global_pool"):
        mixpro.ClsAttention(model)
    mixer = mixpro.MaskMix(num_classes=5, patch_size=4, mask_scale=2)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    batch = mixer(x, y)
    logits = model(batch.images)
    loss = mixpro.soft_target_cross_entropy(logits, batch.targets(logits))
    loss.backward()
    assert torch.isfinite(loss)


def test_probe_rejects_non_modules():
    with pytest.raises(TypeError, match="model"):
        mixpro.ClsAttention("vit")


# models whose attention logits carry more than q·kᵀ (rope, relative position bias): the probe
# reads them un-fused; checked against timm's own FX attention extractor (an independent path)
ROPE_RELPOS = {
    "vit_rope": ("vit_small_patch16_rope_224", dict(TINY)),
    "beit_token": ("beit_base_patch16_224", dict(TINY, global_pool="token")),
    "eva_token": ("eva02_tiny_patch14_224", dict(TINY, global_pool="token")),
    "vit": MODELS["vit"],
}


@pytest.mark.parametrize("key", list(ROPE_RELPOS))
def test_probe_matches_timm_attention_extract(key):
    from timm.utils import AttentionExtract

    name, kw = ROPE_RELPOS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # non-zero biases and relative-position tables
        for pname, p in model.named_parameters():
            if "bias" in pname or "relative_position" in pname:
                p.normal_(0, 0.5)
    x = torch.randn(2, 3, 32, 32)
    probe = mixpro.ClsAttention(model)
    assert probe.layout == ("qkv" if key == "vit" else "probs")
    with torch.no_grad():
        model(x)
    got = probe.attention.clone()
    probe.remove()
    assert model.blocks[-1].attn.fused_attn, "remove() restores fused attention"
    for blk in model.blocks:
        blk.attn.fused_attn = False
    maps = AttentionExtract(model, method="fx")(x)
    ref = list(maps.values())[-1][:, :, 0, model.num_prefix_tokens:].mean(1)
    assert got.shape == ref.shape == (2, 64)
    assert torch.allclose(got, ref, atol=1e-6), (got - ref).abs().max()


def test_unfused_method_equals_cls_row_and_restores_fusion():
    model = _make("vit").train()
    x = torch.randn(3, 3, 32, 32)
    exact = mixpro.ClsAttention(model, reading="cls_row")
    unfused = mixpro.ClsAttention(model, reading="unfused")
    assert not model.blocks[-1].attn.fused_attn
    torch.manual_seed(1)
    model(x)
    assert torch.allclose(exact.attention, unfused.attention, atol=1e-6)
    unfused.remove()
    exact.remove()
    assert model.blocks[-1].attn.fused_attn


def test_exact_method_refuses_rope_and_unknown_attention():
    rope = timm.create_model("vit_small_patch16_rope_224", pretrained=False, **TINY)
    with pytest.raises(mixpro.NoClsAttentionError, match="AttentionRope"):
        mixpro.ClsAttention(rope, reading="cls_row")
    diff = timm.create_model("vit_tiny_patch16_224", pretrained=False, attn_layer="diff", **TINY)
    with pytest.raises(mixpro.NoClsAttentionError, match="DiffAttention"):
        mixpro.ClsAttention(diff)
    with pytest.raises(ValueError, match="reading"):
        mixpro.ClsAttention(_make("vit"), reading="fast")


def test_no_stale_attention_when_the_hooked_block_does_not_run():
    model = _make("vit")
    probe = mixpro.ClsAttention(model)
    model(torch.randn(2, 3, 32, 32))
    assert probe.attention.shape == (2, 64)
    model.blocks = model.blocks[:-1]  # the hooked block no longer runs
    model(torch.randn(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="did not run"):
        _ = probe.attention


# -- issue 11: the token grid, class-attention un-fused, the forward an attention map belongs to


def _slow_lambda_attn(mask: torch.Tensor, attention: torch.Tensor, grid) -> torch.Tensor:
    """Σ_t m_t·a_t / Σ_t a_t with m_t the share of token t's pixels from sample i (loops)."""
    b = attention.shape[0]
    h, w = mask.shape[-2:]
    gh, gw = grid
    th, tw = h // gh, w // gw
    out = torch.zeros(b)
    for i in range(b):
        m = mask[i if mask.shape[0] > 1 else 0, 0].float()
        num = 0.0
        for r in range(gh):
            for c in range(gw):
                frac = m[r * th:(r + 1) * th, c * tw:(c + 1) * tw].mean()
                num += float(frac) * float(attention[i, r * gw + c])
        out[i] = num / float(attention[i].sum())
    return out


def _transmix_batch(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixer = mixpro.TransMix(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=5, ratio=0.0,
                            token_mode="area", generator=g)
    while True:  # a batch whose box cuts through the image
        batch = mixer(torch.randn(2, 3, *size, generator=g), torch.tensor([0, 1]))
        if 0.1 < float(batch.lam_area[0]) < 0.9:
            return batch


def test_transmix_without_patch_size_reads_the_grid_from_the_image_shape():
    # 16×64 images, patch 4: a 4×16 grid of 64 tokens, which a square guess reads as 8×8
    batch = _transmix_batch((16, 64))
    attention = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(2, 5)
    batch.targets(logits, attention)
    ref = _slow_lambda_attn(batch.mask, attention, (4, 16))
    assert torch.allclose(batch.lam_attn, ref, atol=1e-6), (batch.lam_attn, ref)


def test_transmix_without_patch_size_refuses_a_grid_the_image_contradicts():
    batch = _transmix_batch((16, 64))
    with pytest.raises(ValueError, match="patch_size"):  # 16·64/32 = 32 px² per token: no square
        batch.targets(torch.randn(2, 5), torch.rand(2, 32))


def test_probe_attention_carries_the_model_grid_for_non_square_patches():
    # patches of 2×8 px on 16×64 images: an 8×8 grid, which no square-stride rule can find
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(16, 64),
                              patch_size=(2, 8), depth=1, embed_dim=32, num_heads=2,
                              num_classes=5)
    probe = mixpro.ClsAttention(model)
    batch = _transmix_batch((16, 64))
    logits = model(batch.images)
    assert probe.grid == (8, 8)
    assert mixpro.attention_origin(probe.attention).grid == (8, 8)
    batch.targets(logits, probe.attention)
    ref = _slow_lambda_attn(batch.mask, probe.attention, (8, 8))
    assert torch.allclose(batch.lam_attn, ref, atol=1e-6), (batch.lam_attn, ref)


@pytest.mark.parametrize("key", ["cait", "xcit"])
def test_unfused_method_reads_class_attention(key):
    model = _make(key).train()
    size = MODELS[key][1]["img_size"]
    x = torch.randn(3, 3, size, size)
    exact = mixpro.ClsAttention(model, reading="cls_row")
    unfused = mixpro.ClsAttention(model, reading="unfused")
    assert unfused.layout == "probs" and not _last_attn(model).fused_attn
    model(x)
    a = unfused.attention
    assert a.shape == exact.attention.shape and (a >= 0).all()
    assert torch.allclose(a, exact.attention, atol=1e-6)
    unfused.remove()
    exact.remove()
    assert _last_attn(model).fused_attn


def test_unfused_probe_failing_in_a_forward_restores_fused_attention():
    model = _make("vit")
    attn = model.blocks[-1].attn
    mixpro.ClsAttention(model, reading="unfused")
    assert not attn.fused_attn
    forward = attn.forward
    attn.forward = lambda x, **kw: (attn.attn_drop(torch.zeros(2, 5)), forward(x, **kw))[1]
    with pytest.raises(RuntimeError, match="attn_drop got"):
        model(torch.randn(2, 3, 32, 32))
    assert attn.fused_attn, "a failing probe removes itself and restores fused_attn"
    del attn.forward
    model(torch.randn(2, 3, 32, 32))  # the model runs on without the probe


def _mixpro_batch(images, seed=0):
    mixer = mixpro.MixPro(num_classes=5, patch_size=4, mask_scale=2,
                          generator=torch.Generator().manual_seed(seed))
    return mixer(images, torch.tensor([0, 1, 2, 3]))


def test_targets_refuse_attention_of_another_forward_pass():
    model = _make("vit")
    probe = mixpro.ClsAttention(model)
    batch = _mixpro_batch(torch.randn(4, 3, 32, 32))
    logits = model(batch.images)
    batch.targets(logits, probe.attention)  # the common, correct case
    assert probe.attention_of(batch.images) is probe.attention
    model(torch.randn(4, 3, 32, 32))  # e.g. a clean forward after the mixed one
    with pytest.raises(ValueError, match="another forward pass"):
        batch.targets(logits, probe.attention)
    with pytest.raises(ValueError, match="images"):
        probe.attention_of(batch.images)
    # the attention taken right after the mixed forward stays valid
    logits = model(batch.images)
    kept = probe.attention
    model(torch.randn(4, 3, 32, 32))
    batch.targets(logits, kept)


def test_attention_origin_survives_a_ddp_style_wrapper():
    model = _make("vit")
    wrapped = torch.nn.DataParallel(model)  # on CPU: passes the tensor through
    probe = mixpro.ClsAttention(wrapped)
    batch = _mixpro_batch(torch.randn(4, 3, 32, 32))
    logits = wrapped(batch.images)
    batch.targets(logits, probe.attention)
    src = mixpro.attention_origin(probe.attention)
    assert src.came_from(batch.images) and src.forward == 1 and src.grid == (8, 8)
    assert mixpro.attention_origin(probe.attention.clone()) is None


def test_probe_on_a_compiled_model_says_attach_before_compiling():
    model = _make("vit")
    with pytest.raises(TypeError, match="before|first, then compile"):
        mixpro.ClsAttention(torch.compile(model))
    with pytest.raises(TypeError, match="compile"):
        mixpro.ClsAttention(torch.nn.DataParallel(torch.compile(model)))


def test_probe_attached_before_compiling_reads_the_compiled_forward(one_thread):
    model = _make("vit").eval()
    probe = mixpro.ClsAttention(model)
    compiled = torch.compile(model, backend="eager")
    batch = _mixpro_batch(torch.randn(4, 3, 32, 32))
    logits = compiled(batch.images)
    got = probe.attention
    model(batch.images)
    ref = probe.attention
    assert torch.allclose(got, ref, atol=1e-6)
    batch.targets(logits, got)
    compiled(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="another forward pass"):
        batch.targets(logits, probe.attention)


@pytest.mark.parametrize("kw", [dict(), dict(reg_tokens=2), dict(class_token=False),
                                dict(reg_tokens=2, pool_include_prefix=True)])
@pytest.mark.parametrize("train", [True, False])
def test_probe_reads_attention_pool_latent_exactly(kw, train):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                              **dict(TINY, global_pool="map", **kw)).train(train)
    pool = model.attn_pool
    with torch.no_grad():  # a latent and projections far from their small initialisation
        pool.latent.normal_()
        pool.q.weight.normal_(0, 0.5)
        pool.kv.weight.normal_(0, 0.5)
    assert mixpro.needs_class_attention(model) is False
    probe = mixpro.ClsAttention(model)
    assert probe.layout == "latent" and pool.fused_attn
    captured = {}
    hook = pool.register_forward_pre_hook(lambda m, a: captured.update(x=a[0].detach()))
    x = torch.randn(3, 3, 32, 32)
    model(x)
    hook.remove()
    got = probe.attention
    # slow reference: the latent query's softmax row per head, from attn_pool's own input
    tokens = captured["x"]
    e, h = pool.kv.out_features // 2, pool.num_heads
    d = e // h
    q = pool.q(pool.latent[0, 0])
    k = tokens @ pool.kv.weight[:e].T + pool.kv.bias[:e]
    rows = [((k[:, :, i * d:(i + 1) * d] @ q[i * d:(i + 1) * d]) / d ** 0.5).softmax(-1)
            for i in range(h)]
    ref = sum(rows) / h
    skip = model.num_prefix_tokens if model.pool_include_prefix else 0
    ref = ref[:, skip:]
    assert tokens.shape[1] - skip == 64 and got.shape == ref.shape == (3, 64)
    assert torch.allclose(got, ref, atol=1e-6), (got - ref).abs().max()
    if not skip:  # no prefix key (the default): the row sums to 1
        assert torch.allclose(got.sum(1), torch.ones(3), atol=1e-5)
    else:
        assert (got.sum(1) < 1).all()
    assert probe.grid == (8, 8)
    with pytest.raises(mixpro.NoClsAttentionError, match="AttentionPoolLatent"):
        mixpro.ClsAttention(model, reading="unfused")
