"""Class-attention heads (``with_class_attention``): the probe's map against a slow reference,
training through PAL/TransMix, state-dict round trips, CA-Swin's parameter count, geometry."""

from __future__ import annotations

import io

import pytest
import timm
import torch

import mixpro
from mixpro.heads import SwinClassAttentionBlock
from mixpro.methods import METHODS, MixOptions, build_mixer

# tiny configurations with random weights: 64 px images, stride 32 → a 2×2 token grid
SWIN = ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2, depths=(1, 1, 1, 2),
                                             embed_dim=24, num_heads=(1, 1, 1, 2)))
FAMILIES = {
    "swin": (*SWIN, {}),
    "pvt_v2": ("pvt_v2_b0", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
                                 num_heads=(1, 1, 1, 2)), {}),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
                 dict(depth=2, num_heads=2)),
    "resnet": ("resnet18", dict(layers=(1, 1, 1, 1)), dict(embed_dim=64, num_heads=2)),
    "vit_avg": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=1, embed_dim=32,
                                             num_heads=2, class_token=False, global_pool="avg"),
                {}),
}
CASES = [(k, "ca") for k in FAMILIES] + [("swin", "ca_swin")]
SIZE = {"vit_avg": 32}
PATCH = {"swin": 4, "pvt_v2": 4, "convnext": 4, "resnet": 4, "vit_avg": 4}  # the model's stem


def _timm(key, seed=0):
    torch.manual_seed(seed)
    name, kw, _ = FAMILIES[key]
    return timm.create_model(name, pretrained=False, num_classes=5, **kw)


def _build(key, mode, seed=0):
    model = _timm(key, seed)
    head_kw = FAMILIES[key][2] if mode == "ca" else {}
    torch.manual_seed(seed + 1)
    return mixpro.with_class_attention(model, mode=mode, **head_kw)


def _sharpen(model):
    """Larger q/k weights than the 0.02 initialisation, so the attention is far from uniform."""
    attn = model.class_attention_parts()[0]
    with torch.no_grad():
        for name in ("q", "k", "qkv"):
            lin = getattr(attn, name, None)
            if lin is not None:
                lin.weight.normal_(0, 0.3)
                lin.bias.normal_(0, 0.3)


def _images(key, b=3, seed=0):
    s = SIZE.get(key, 64)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _slow_reference(model, captured):
    """Head-mean cls→token attention, written out per head from the block's input."""
    if model.mode == "ca_swin":
        blk = model.backbone.layers[-1].blocks[-1]
        x = captured["x"]
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        cls = tokens.mean(1, keepdim=True)
        w, bias = blk.attn.qkv.weight, blk.attn.qkv.bias
        c = tokens.shape[-1]
        n1 = blk.norm1(torch.cat((cls, tokens), 1))
        q = n1[:, 0] @ w[:c].T + bias[:c]
        k = n1 @ w[c:2 * c].T + bias[c:2 * c]
    else:
        blk = model.blocks[-1]
        tokens, cls = captured["x"], captured["cls"]
        n1 = blk.norm1(torch.cat((cls, tokens), 1))
        q = blk.attn.q(n1[:, 0])
        k = blk.attn.k(n1)
    h = blk.attn.num_heads
    d = q.shape[-1] // h
    rows = []
    for i in range(h):
        qi, ki = q[:, i * d:(i + 1) * d].double(), k[:, :, i * d:(i + 1) * d].double()
        logits = torch.einsum("bd,bnd->bn", qi, ki) / d ** 0.5
        rows.append(logits.softmax(-1))
    return (sum(rows) / h)[:, 1:].float()


def _capture(model, captured):
    if model.mode == "ca_swin":
        blk = model.backbone.layers[-1].blocks[-1]
        return blk.register_forward_pre_hook(lambda m, a: captured.update(x=a[0].detach()))
    return model.blocks[-1].register_forward_pre_hook(
        lambda m, a: captured.update(x=a[0].detach(), cls=a[1].detach()))


@pytest.mark.parametrize("key,mode", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_probe_reads_the_head_exactly_with_fused_attention(key, mode, train, one_thread):
    model = _build(key, mode).train(train)
    _sharpen(model)
    attn = model.class_attention_parts()[0]
    if mode == "ca_swin":  # timm's Swin leaves SDPA off (experimental): check both paths
        attn.fused_attn = train
    fused = attn.fused_attn
    probe = mixpro.ClsAttention(model)
    assert attn.fused_attn == fused, "the probe leaves fused SDPA as it was"
    captured = {}
    hook = _capture(model, captured)
    x = _images(key)
    logits = model(x)
    hook.remove()
    got = probe.attention
    grid = model.token_grid(x.shape[-2:])
    assert logits.shape == (3, 5)
    assert probe.grid == grid and mixpro.attention_origin(got).grid == grid
    assert got.shape == (3, grid[0] * grid[1]) and got.dtype == torch.float32
    assert (got >= 0).all() and (got.sum(1) < 1).all()  # the cls key holds the rest
    ref = _slow_reference(model, captured)
    assert torch.allclose(got, ref, atol=1e-6), (got - ref).abs().max()
    assert ref.std() > 1e-3, "reference attention is not trivially uniform"
    probe.remove()


@pytest.mark.parametrize("mode", ["ca", "ca_swin"])
def test_unfused_read_of_a_head_equals_the_exact_one(mode, one_thread):
    model = _build("swin", mode).train()
    _sharpen(model)
    attn = model.class_attention_parts()[0]
    attn.fused_attn = True  # timm's Swin leaves it off (experimental); CaiT blocks have it on
    exact = mixpro.ClsAttention(model)
    unfused = mixpro.ClsAttention(model, reading="unfused")
    assert unfused.layout == "probs" and not attn.fused_attn
    model(_images("swin"))
    assert torch.allclose(exact.attention, unfused.attention, atol=1e-6)
    unfused.remove()
    assert attn.fused_attn


def _geometry(key, model, size):
    patch = PATCH[key]
    scale = model.token_stride // patch  # one cell = one attention token
    assert mixpro.check_mask_geometry(model, patch, scale, size) == model.token_grid(size)
    return patch, scale


@pytest.mark.parametrize("key,mode", CASES)
def test_mixpro_gradient_reaches_the_first_layer(key, mode, one_thread):
    model = _build(key, mode).train()
    probe = mixpro.ClsAttention(model)
    x = _images(key, b=4)
    patch, scale = _geometry(key, model, x.shape[-1])
    mixer = mixpro.MixPro(num_classes=5, patch_size=patch, mask_scale=scale,
                          generator=torch.Generator().manual_seed(0))
    batch = mixer(x, torch.tensor([0, 1, 2, 3]))
    logits = model(batch.images)
    targets = batch.targets(logits, probe.attention)
    frac = batch.token_fraction(probe.grid)
    assert set(frac.unique().tolist()) <= {0.0, 1.0}, "cells are whole tokens: exact fractions"
    mixpro.soft_target_cross_entropy(logits, targets).backward()
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert batch.lam_attn is not None and torch.isfinite(batch.lam).all()


@pytest.mark.parametrize("key,mode", [("swin", "ca_swin"), ("convnext", "ca"), ("vit_avg", "ca")])
def test_a_few_training_steps_of_mixpro_and_transmix(key, mode, one_thread):
    model = _build(key, mode).train()
    probe = mixpro.ClsAttention(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size = SIZE.get(key, 64)
    patch, scale = _geometry(key, model, size)
    g = torch.Generator().manual_seed(0)
    mixers = [mixpro.MixPro(num_classes=5, patch_size=patch, mask_scale=scale, generator=g),
              mixpro.TransMix(mixup_alpha=0.0, num_classes=5, generator=g)]
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(4):
        x = torch.randn(4, 3, size, size, generator=g)
        batch = mixers[step % 2](x, torch.randint(0, 5, (4,), generator=g))
        logits = model(batch.images)
        loss = mixpro.soft_target_cross_entropy(logits, batch.targets(logits, probe.attention))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    trainable = [p.requires_grad for p in model.parameters()]
    assert changed == trainable, "every trainable parameter is used (DDP needs no unused ones)"


@pytest.mark.parametrize("key,mode", CASES)
def test_state_dict_round_trip_through_the_same_call(key, mode, one_thread):
    model = _build(key, mode, seed=0).eval()
    with torch.no_grad():
        model.get_classifier().weight.normal_()  # differ from a fresh initialisation
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = _build(key, mode, seed=7).eval()
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = _images(key)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert fresh.num_classes == 5 and fresh.pretrained_cfg["num_classes"] == 5


def test_ca_swin_adds_no_parameter_and_keeps_the_swin_keys():
    plain = _timm("swin")
    n = sum(p.numel() for p in plain.parameters())
    keys = set(plain.state_dict())
    table = plain.layers[-1].blocks[-1].attn.relative_position_bias_table.numel()
    model = mixpro.with_class_attention(_timm("swin"), mode="ca_swin")
    assert sum(p.numel() for p in model.parameters()) == n
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n - table
    assert set(model.backbone.state_dict()) == keys  # a plain Swin checkpoint loads as is
    model.backbone.load_state_dict(plain.state_dict())
    assert isinstance(model.backbone.layers[-1].blocks[-1], SwinClassAttentionBlock)
    assert model.token_stride == 32 and model.grid_size == (2, 2)
    assert model.patch_embed is model.backbone.patch_embed
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("fused", [True, False])
def test_ca_swin_block_is_class_attention_from_the_mean_token(fused):
    model = mixpro.with_class_attention(_timm("swin"), mode="ca_swin").eval()
    blk = model.backbone.layers[-1].blocks[-1]
    blk.attn.fused_attn = fused
    x = torch.randn(2, 2, 2, model.num_features)
    with torch.no_grad():
        out = blk(x)
        cls = x.reshape(2, 4, -1).mean(1, keepdim=True)
        tokens = x.reshape(2, 4, -1)
        u = blk.norm1(torch.cat((cls, tokens), 1))
        c = tokens.shape[-1]
        qkv = u @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        h = blk.attn.num_heads
        d = c // h
        heads = []
        for i in range(h):
            qi = qkv[:, :1, i * d:(i + 1) * d]
            ki = qkv[:, :, c + i * d:c + (i + 1) * d]
            vi = qkv[:, :, 2 * c + i * d:2 * c + (i + 1) * d]
            heads.append(((qi @ ki.transpose(1, 2)) / d ** 0.5).softmax(-1) @ vi)
        y = cls + blk.attn.proj(torch.cat(heads, -1))
        y = y + blk.mlp(blk.norm2(y))
    assert out.shape == (2, 1, 1, c)
    assert torch.allclose(out.reshape(2, 1, c), y, atol=1e-5)


def test_relabelling_takes_the_grid_from_the_head_not_from_patch_size():
    model = _build("swin", "ca_swin").train()
    probe = mixpro.ClsAttention(model)
    mixer = mixpro.MixPro(num_classes=5, patch_size=4, mask_scale=8,
                          generator=torch.Generator().manual_seed(0))
    batch = mixer(_images("swin", b=4), torch.tensor([0, 1, 2, 3]))
    logits = model(batch.images)
    batch.targets(logits, probe.attention)  # 2×2 tokens of 32 px, though patch_size is 4
    with pytest.raises(ValueError, match="patch tokens"):  # a copy has no grid: 4 ≠ 16×16
        batch.targets(logits, probe.attention.clone())


def test_needs_class_attention():
    for key in FAMILIES:
        assert mixpro.needs_class_attention(_timm(key))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                            depth=1, embed_dim=32, num_heads=2)
    assert not mixpro.needs_class_attention(vit)
    assert not mixpro.needs_class_attention(torch.compile(vit))
    assert not mixpro.needs_class_attention(_build("convnext", "ca"))


def test_check_mask_geometry_names_mask_scale_and_lists_what_fits():
    assert mixpro.check_mask_geometry(32, 4, 8, 224) == (7, 7)  # Swin at 224: one token a cell
    with pytest.raises(ValueError, match=r"mask_scale .*fit: \[8, 56\]"):
        mixpro.check_mask_geometry(32, 4, 2, 224)
    assert mixpro.check_mask_geometry(16, 16, 2, 224) == (14, 14)  # ViT: any tiling scale
    with pytest.raises(ValueError, match="image_size"):
        mixpro.check_mask_geometry(32, 4, 8, 200)
    with pytest.raises(TypeError, match="model_or_stride"):
        mixpro.check_mask_geometry(torch.nn.Linear(2, 2), 4, 8, 224)
    assert mixpro.check_mask_geometry(_timm("convnext"), 4, 8, 64) == (2, 2)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model"):
        mixpro.with_class_attention("swin")
    with pytest.raises(ValueError, match="mode"):
        mixpro.with_class_attention(_timm("swin"), mode="cls")
    with pytest.raises(TypeError, match="model: mode='ca_swin'"):
        mixpro.with_class_attention(_timm("convnext"), mode="ca_swin")
    with pytest.raises(ValueError, match="depth"):
        mixpro.with_class_attention(_timm("swin"), mode="ca_swin", depth=2)
    with pytest.raises(TypeError, match="compile"):
        mixpro.with_class_attention(torch.compile(_timm("swin")))
    with pytest.raises(ValueError, match="num_classes"):
        mixpro.with_class_attention(timm.create_model("convnext_atto", num_classes=0))
    with pytest.raises(ValueError, match="num_heads"):
        mixpro.with_class_attention(_timm("convnext"), num_heads=5)
    with pytest.raises(TypeError, match="depth"):
        mixpro.with_class_attention(_timm("convnext"), depth=1.5)
    with pytest.raises(TypeError, match="already"):
        mixpro.with_class_attention(_build("convnext", "ca"))
    with pytest.raises(ValueError, match="image_size"):
        _build("convnext", "ca").token_grid(50)


def test_default_head_width_is_capped_at_768():
    wide = timm.create_model("resnet50", pretrained=False, layers=(1, 1, 1, 1), num_classes=5)
    model = mixpro.with_class_attention(wide)
    assert model.num_features == 768 and isinstance(model.proj, torch.nn.Linear)
    assert model.proj.in_features == 2048 and model.blocks[0].attn.num_heads == 24
    narrow = _build("vit_avg", "ca")
    assert narrow.num_features == 32 and isinstance(narrow.proj, torch.nn.Identity)


def test_models_without_timm_feature_api_are_refused():
    class Plain(torch.nn.Module):
        num_classes = 5
        feature_info = [dict(num_chs=8, reduction=8, module="conv")]

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 8, 8)

        def forward_intermediates(self, x):
            return [self.conv(x)]

    with pytest.raises(TypeError, match="forward_intermediates"):
        mixpro.with_class_attention(Plain())
    with pytest.raises(TypeError, match="feature_info"):
        mixpro.with_class_attention(torch.nn.Linear(2, 5), num_classes=5)


def _attention_methods() -> list[str]:
    """The registered methods that relabel with attention under their default options (the
    registry says so; each one's mixer is checked to agree below)."""
    return sorted(m for m, spec in METHODS.items() if spec.attention(MixOptions())
                  and not spec.helpers)


@pytest.mark.parametrize("key,mode", CASES)
def test_every_attention_labelled_method_trains_on_every_head(key, mode, one_thread):
    """Each method that relabels with attention (built by name, as mixpro train does, with
    the head's token size) runs forward, targets and backward on every family and head."""
    model = _build(key, mode).train()
    probe = mixpro.ClsAttention(model)
    size = SIZE.get(key, 64)
    patch, scale = _geometry(key, model, size)
    g = torch.Generator().manual_seed(0)
    assert {"cutmix_pal", "maskmix_transmix", "mixpro", "paper", "transmix",
            "transmix_aligned"} <= set(_attention_methods())
    for method in _attention_methods():
        mixer = build_mixer(method, MixOptions(mask_scale=scale, mixup_alpha=0.0,
                                               maskmix_prob=1.0),
                            num_classes=5, patch_size=patch, generator=g,
                            token_size=model.token_stride)
        assert mixer.needs_attention, method
        batch = mixer(torch.randn(4, 3, size, size, generator=g),
                      torch.randint(0, 5, (4,), generator=g))
        logits = model(batch.images)
        loss = batch.loss(logits, probe.attention)
        assert torch.isfinite(loss), method
        assert batch.lam_attn is not None and torch.isfinite(batch.lam).all(), method
        model.zero_grad()
        loss.backward()
        assert METHODS[method].patch


@pytest.mark.parametrize("key,mode", [("vit_avg", "ca"), ("swin", "ca"), ("swin", "ca_swin")])
def test_layer_decay_groups_the_backbone_by_its_layers_and_the_head_last(key, mode, one_thread):
    """timm's layer-wise lr decay on a class-attention model: the backbone's own groups (stem
    lowest), the new cls token / blocks / head at the full lr."""
    from timm.optim import create_optimizer_v2

    model = _build(key, mode)
    opt = create_optimizer_v2(model, opt="adamw", lr=1.0, weight_decay=0.0, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g.get("lr_scale", 1.0) for g in opt.param_groups for p in g["params"]}
    stem = scale["backbone.patch_embed.proj.weight"]
    assert stem == min(scale.values()) and stem <= 0.25
    new = [n for n in scale if not n.startswith("backbone.")] if mode == "ca" else \
        [n for n in scale if n.startswith("backbone.head.")]
    assert new and all(scale[n] == 1.0 for n in new)
    assert len(set(scale.values())) >= 3  # per layer, not one block of everything
