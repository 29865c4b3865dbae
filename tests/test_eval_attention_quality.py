"""The premise's metric: cls attention against the known object mask (hand-computed cases,
and ``mixpro eval --evals attention`` end to end)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_data import make_fashion
from test_train import tiny

from mixpro.cli import main
from mixpro.evaluate.attention_quality import attention_quality, object_share
from mixpro.train import run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_object_share_is_the_share_of_bright_pixels_per_token():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 0, 0] = 0.5  # token (0, 0): 1 of 4 pixels
    img[0, 0, 2:, 2:] = 1.0  # token (1, 1): all 4
    assert object_share(img, (2, 2)).tolist() == [[0.25, 0.0, 0.0, 1.0]]


def test_attention_quality_by_hand():
    share = torch.tensor([[0.25, 0.0, 0.0, 1.0],
                          [0.0, 0.5, 0.5, 0.5]])
    att = torch.tensor([[0.1, 0.2, 0.3, 0.2],    # sums to 0.8: the cls token kept 0.2
                        [0.4, 0.2, 0.2, 0.2]])
    q = attention_quality(att, share)
    # image 0: renormalised a = [.125, .25, .375, .25]; object tokens 0 and 3
    assert q["object_share"][0].item() == pytest.approx(0.375)
    assert q["chance"].tolist() == [0.5, 0.75]
    assert q["pointing"].tolist() == [0.0, 0.0]  # argmax: token 2 (off), token 0 (off)
    # Spearman by hand (scipy-free): ranks of a = [0, 1.5, 3, 1.5], of s = [2, 0.5, 0.5, 3]
    ra, rs = np.array([0, 1.5, 3, 1.5]), np.array([2, 0.5, 0.5, 3])
    ra, rs = ra - ra.mean(), rs - rs.mean()
    want = float((ra * rs).sum() / math.sqrt((ra ** 2).sum() * (rs ** 2).sum()))
    assert q["rank_corr"][0].item() == pytest.approx(want)
    # image 1: a = [.4, .2, .2, .2], s = [0, .5, .5, .5]: perfectly anti-ranked
    assert q["object_share"][1].item() == pytest.approx(0.6)
    assert q["rank_corr"][1].item() == pytest.approx(-1.0)


def test_block_attentions_are_each_blocks_softmax_rows():
    import timm

    from mixpro import ClsAttention
    from mixpro.evaluate.attention_quality import block_attentions

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, in_chans=1, img_size=16,
                              patch_size=4, embed_dim=16, depth=2, num_heads=2,
                              reg_tokens=2).eval()
    x = torch.randn(3, 1, 16, 16)
    rows = block_attentions(model, x)
    assert rows.shape == (2, 2, 3, 16)
    probe = ClsAttention(model)
    with torch.no_grad():
        model(x)
    assert torch.allclose(rows[-1].mean(0), probe.attention, atol=1e-6)
    probe.remove()
    assert block_attentions(torch.nn.Linear(2, 2), x) is None


def test_rank_corr_is_undefined_for_a_flat_map():
    q = attention_quality(torch.full((1, 4), 0.25), torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert math.isnan(q["rank_corr"][0].item()) and q["object_share"][0].item() == 0.5


def test_eval_attention_writes_attention_quality(tmp_path, capsys):
    data = make_fashion(tmp_path / "fm")
    run.train(tiny(data, tmp_path / "r", epochs=1, warmup_epochs=0, max_steps=2))
    out = tmp_path / "ev"
    assert main(["eval", str(tmp_path / "r" / "best.pt"), "--data-dir", str(data),
                 "--evals", "attention", "--attention-images", "40", "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads((out / "eval.json").read_text())["results"][0]["attention_quality"]
    assert res["num_images"] == 40
    for key in ("object_share", "chance", "pointing", "rank_corr", "cls_share"):
        assert 0.0 <= res[key] <= 1.0 or key == "rank_corr", key
    assert -1.0 <= res["rank_corr"] <= 1.0
    # every block and head; the last block's head mean is the probe's map, so its scores are
    # the model's own (computed here from the block's qkv, independently of the probe)
    blocks = res["blocks"]
    assert [b["block"] for b in blocks] == [0] and len(blocks[0]["heads"]) == 2
    for key in ("object_share", "pointing", "rank_corr"):
        assert blocks[-1][key] == pytest.approx(res[key], abs=1e-6), key
    # on data without a known object mask it is one line
    folder = tmp_path / "imgs"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True)
            from PIL import Image

            Image.new("L", (8, 8)).save(folder / split / c / "0.png")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r" / "best.pt"), "--data", str(folder), "--evals",
                 "attention", "--out", str(out)]) == 2
    assert "needs data whose object mask is known" in capsys.readouterr().err


def test_the_probe_reads_another_block_on_request_and_train_takes_the_key(tmp_path, capsys):
    import timm

    from mixpro import ClsAttention, NoClsAttentionError, with_class_attention
    from mixpro.evaluate.attention_quality import block_attentions

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, in_chans=1, img_size=16,
                            patch_size=4, embed_dim=16, depth=3, num_heads=2).eval()
    x = torch.randn(2, 1, 16, 16)
    rows = block_attentions(vit, x)
    for block in (0, 1, -1):
        with ClsAttention(vit, block=block) as probe:
            with torch.no_grad():
                vit(x)
            assert torch.allclose(probe.attention, rows[block].mean(0), atol=1e-6), block
    with pytest.raises(ValueError, match=r"block must be in \[-3, 2\], got 5"):
        ClsAttention(vit, block=5)
    cnn = with_class_attention(timm.create_model("convnext_atto", num_classes=3))
    with pytest.raises(NoClsAttentionError, match="block=0 selects a block of a plain timm ViT"):
        ClsAttention(cnn, block=0)
    data = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    res = run.train(tiny(data, tmp_path / "r", epochs=1, warmup_epochs=0, max_steps=2,
                         attention_block=0))
    assert math.isfinite(res.metrics[0]["train_loss"])
    capsys.readouterr()
    assert main(["train", "--data-dir", str(data), "--img-size", "16", "--epochs", "1",
                 "--warmup-epochs", "0", "--max-steps", "1", "--batch-size", "4", "--threads",
                 "1", "--model-kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}",
                 "--no-progress", "--attention-block", "3", "--output",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mixpro: error: attention_block: block must be in [-1, 0], got 3", err
