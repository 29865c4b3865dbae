"""Figures: every PNG is written, non-trivial, and its content follows the inputs."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import timm
import torch

from mixpro.cli import main
from mixpro.data.factory import Normalize
from mixpro.plots import evaluation, paper

KW = dict(img_size=32, patch_size=4, in_chans=1, depth=1, embed_dim=16, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                             **KW).eval()


def _images(n):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 32, 32)
    x[:, :, 6:26, 8:24] = torch.rand(n, 1, 20, 16, generator=g)
    return x, torch.arange(n) % 10


def _nontrivial(path, min_bytes=15_000):
    assert path.exists() and path.stat().st_size > min_bytes
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas


def _curve(name, acc):
    pts = [{"info_loss": k / 10, "acc_mean": a, "acc_std": 0.02} for k, a in enumerate(acc)]
    return {"name": name, "occlusion": {"grid": [8, 8], "patch_px": [4, 4], "num_images": 10,
                                        "repeats": 3, "curves": {"random": pts}}}


def test_occlusion_curves_one_line_per_checkpoint(tmp_path):
    res = [_curve("cutmix", np.linspace(0.9, 0.1, 10)), _curve("mixpro", np.linspace(0.9, 0.5, 10))]
    path = evaluation.occlusion_curves(res, tmp_path / "occ.png", title="test")
    _nontrivial(path)
    one = evaluation.occlusion_curves(res[:1], tmp_path / "occ1.png")
    assert mpimg.imread(path).shape[1] == mpimg.imread(one).shape[1]  # same panels
    assert not np.array_equal(mpimg.imread(path), mpimg.imread(one))  # second line drawn


def test_paper_figures_written(tmp_path):
    model, norm = _model(), Normalize((0.5,), (0.5,))
    x, y = _images(6)
    p6 = paper.maskmix_attention_grid(paper.AttentionFigure(x, y, model, norm, num_classes=10),
                                      tmp_path / "f6.png")
    p4 = paper.mask_strategies(x[:2], tmp_path / "f4.png", patch_size=4, mask_scale=2)
    p1 = paper.transmix_vs_maskmix(
        paper.AttentionFigure(x[:2], y[:2], model, norm, num_classes=10,
                              classes=[f"c{i}" for i in range(10)]), tmp_path / "f1.png")
    for p in (p6, p4, p1):
        _nontrivial(p)
    p6b = paper.maskmix_attention_grid(
        paper.AttentionFigure(x[:4], y[:4], model, norm, num_classes=10), tmp_path / "f6b.png")
    assert mpimg.imread(p6).shape[1] > mpimg.imread(p6b).shape[1]  # one column per pair


def test_figures_command_and_errors(tmp_path, capsys):
    model = _model()
    ck = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(),
                "config": {"model": "vit_tiny_patch16_224", "model_kwargs": KW,
                           "num_classes": 10}}, ck)
    out = tmp_path / "figs"
    rc = main(["figures", "--checkpoint", str(ck), "--out", str(out), "--pairs", "3"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fig1_transmix_vs_maskmix.png", "fig4_mask_strategies.png",
                     "fig6_maskmix_attention.png"]
    capsys.readouterr()
    rc = main(["figures", "--which", "fig6", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err == "mixpro: error: fig6 need --checkpoint (attention maps, λ_attn)\n"
    rc = main(["figures", "--which", "fig4", "--out", str(tmp_path / "y"),
                                  "--mask-scale", "3"])
    assert rc == 2 and "does not tile" in capsys.readouterr().err
