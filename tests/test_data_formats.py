"""Data formats through timm's readers: tar archives, Hugging Face datasets (single- and
multi-label, offline), webdataset shards, missing optional packages; one tiny train + eval."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixpro.data import DatasetError
from mixpro.data.factory import eval_data, training_data


def _png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _images(prefix: str, classes=("cat", "dog"), n: int = 3) -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": _png(10 * k + i)
            for k, c in enumerate(classes) for i in range(n)}


def _labels(ds) -> list[int]:
    return [int(ds.reader.targets[i]) for i in range(len(ds))]


def test_one_tar_holds_both_splits_and_classes_come_from_its_folders(tmp_path):
    tar = _tar(tmp_path / "d.tar", {**_images("train/", ("c1", "c2", "c10")),
                                    **_images("val/", ("c1", "c2", "c10"), n=2)})
    data = training_data(str(tar), img_size=16, in_chans=3)
    assert data.classes == ["c1", "c2", "c10"]  # timm's natural sort
    assert (len(data.train), len(data.test)) == (9, 6) and not data.multi_label
    for ds in (data.train, data.test):
        for (ti, _, _), y in zip(ds.reader.samples, ds.reader.targets, strict=True):
            assert Path(ti.path).parent.name == data.classes[y]
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and int(y) in (0, 1, 2)
    ev = eval_data(str(tar), img_size=(16, 16), in_chans=1)
    assert ev.classes == data.classes and len(ev) == 6
    x, _ = ev.dataset[0]
    assert x.shape == (1, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_folder_of_split_tars_and_shards_with_synonyms(tmp_path):
    root = tmp_path / "d"
    _tar(root / "train.tar", _images(""))
    for c in ("cat", "dog"):  # validation/: one flat tar shard per class, named by class
        _tar(root / "validation" / f"{c}.tar", {f"{i}.png": _png(i) for i in range(2)})
    data = training_data(str(root), img_size=16, in_chans=3)
    assert data.classes == ["cat", "dog"] and len(data.train) == 6 and len(data.test) == 4
    assert sorted(_labels(data.test)) == [0, 0, 1, 1]
    _tar(root / "validation" / "cow.tar", {"0.png": _png(0)})
    with pytest.raises(DatasetError, match="validation/cow has no counterpart in train.tar/"):
        training_data(str(root), img_size=16, in_chans=3)
    with pytest.raises(DatasetError, match="no test/<class>/ folder inside"):
        training_data(str(_tar(tmp_path / "e.tar", _images("train/"))), img_size=16,
                      in_chans=3, val_split="test")


def _hf_images(n: int) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(_png(i))) for i in range(n)]


def _hf_saved(root: Path, label_feature, labels: dict[str, list]) -> str:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "tags": label_feature})
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"image": _hf_images(len(y)), "tags": y},
                                          features=features)
        for split, y in labels.items()})
    dd.save_to_disk(str(root))
    return f"hfds/{root}"


def test_hf_dataset_offline_classes_from_its_class_label(tmp_path):
    datasets = pytest.importorskip("datasets")
    spec = _hf_saved(tmp_path / "hf", datasets.ClassLabel(names=["zebra", "ant"]),
                     {"train": [0, 1, 1, 0], "validation": [1, 0]})
    data = training_data(spec, img_size=16, in_chans=3)  # val_split 'val' finds 'validation'
    assert data.classes == ["zebra", "ant"] and not data.multi_label  # ClassLabel order
    assert (len(data.train), len(data.test)) == (4, 2)
    assert [data.train[i][1] for i in range(4)] == [0, 1, 1, 0]
    assert data.test[0][0].shape == (3, 16, 16)
    ev = eval_data(spec, img_size=(16, 16), in_chans=3, split="validation")
    assert ev.classes == ["zebra", "ant"] and len(ev) == 2 and not ev.multi_label
    with pytest.raises(DatasetError, match=r"has no split 'holdout' \(splits: train, valid"):
        training_data(spec, img_size=16, in_chans=3, val_split="holdout")


def test_hf_multi_label_targets_are_multi_hot(tmp_path):
    datasets = pytest.importorskip("datasets")
    spec = _hf_saved(tmp_path / "ml", datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"])),
                     {"train": [[0, 2], [1], [], [2]], "test": [[1, 2]]})
    data = training_data(spec, img_size=16, in_chans=3)  # no validation: hfds falls back to test
    assert data.multi_label and data.classes == ["a", "b", "c"]
    targets = torch.stack([data.train[i][1] for i in range(4)])
    assert targets.dtype == torch.float32 and targets.shape == (4, 3)
    assert targets.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert data.test[0][1].tolist() == [0, 1, 1]
    assert eval_data(spec, img_size=(16, 16), in_chans=3).multi_label


def test_hf_unreachable_name_is_one_line_and_never_downloads(tmp_path):
    datasets = pytest.importorskip("datasets")
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(DatasetError) as e:
        training_data("hfds/no-such-org/no-such-set", img_size=16, in_chans=3,
                      data_dir=str(tmp_path / "cache"))
    assert "not in the Hugging Face cache" in str(e.value) and "\n" not in str(e.value)
    assert datasets.config.HF_HUB_OFFLINE == before  # offline only while loading


def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, capsys):
    from mixpro.cli import main

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DatasetError, match=r"needs the datasets package: pip install "
                                           r"'mixpro\[hf\]'"):
        training_data("hfds/anything", img_size=16, in_chans=3)
    (tmp_path / "shards").mkdir()
    assert main(["train", "--data", f"wds/{tmp_path / 'shards'}", "--output",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixpro: error:") and "\n" not in err
    assert "needs the webdataset package: pip install 'mixpro[wds]'" in err


def test_webdataset_shards_by_index(tmp_path):
    pytest.importorskip("webdataset")
    root = tmp_path / "wds"
    info = {"splits": {}, "classes": ["cat", "dog", "owl"]}
    for split, n in (("train", 5), ("validation", 3)):
        members = {}
        for i in range(n):
            members[f"{split}{i:03d}.png"] = _png(i)
            members[f"{split}{i:03d}.cls"] = str(i % 3).encode()
        _tar(root / f"{split}-000.tar", members)
        info["splits"][split] = {"name": split, "num_samples": n, "shard_lengths": [n],
                                 "filenames": [f"{split}-000.tar"]}
    (root / "_info.json").write_text(json.dumps(info))
    data = training_data(f"wds/{root}", img_size=16, in_chans=3)
    assert data.classes == ["cat", "dog", "owl"] and (len(data.train), len(data.test)) == (5, 3)
    assert [data.train[i][1] for i in range(5)] == [0, 1, 2, 0, 1]
    assert data.test[2][0].shape == (3, 16, 16)
    pattern = training_data(f"wds/{root}", img_size=16, in_chans=3,
                            train_split="train-{000..000}.tar")
    assert len(pattern.train) == 5


def test_tar_run_checkpoint_names_classes_and_eval_accepts_it(tmp_path, capsys):
    from mixpro.cli import main

    tar = _tar(tmp_path / "d.tar", {**_images("train/", ("c1", "c2", "c10"), n=4),
                                    **_images("val/", ("c1", "c2", "c10"), n=2)})
    out = tmp_path / "r"
    assert main(["train", "--data", str(tar), "--img-size", "16", "--epochs", "1",
                 "--warmup-epochs", "0", "--batch-size", "4", "--max-steps", "2",
                 "--method", "cutmix", "--threads", "1", "--workers", "0", "--no-progress",
                 "--model-kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}",
                 "--output", str(out)]) == 0
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["config"]["classes"] == ["c1", "c2", "c10"]
    assert ck["config"]["recipe"]["val_split"] == "val"
    assert main(["eval", str(out / "best.pt"), "--evals", "clean", "--calib-bin", "2",
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 0


def test_multi_label_mixpro_run_trains_with_bce_and_reports_map(tmp_path, capsys):
    """A tiny multi-label (hfds Sequence(ClassLabel)) MixPro run end to end: BCE on mixed
    multi-hot targets, test mAP and top-1 precision in metrics.jsonl; eval refuses it."""
    datasets = pytest.importorskip("datasets")
    from mixpro.cli import main

    tags = [[0, 2], [1], [2], [0, 1], [1, 2], [0], [2], [0, 1, 2]]
    spec = _hf_saved(tmp_path / "ml", datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"])),
                     {"train": tags, "validation": tags[:4]})
    out = tmp_path / "r"
    assert main(["train", "--data", spec, "--img-size", "16", "--epochs", "1",
                 "--warmup-epochs", "0", "--batch-size", "4", "--max-steps", "2",
                 "--method", "mixpro", "--mask-scale", "2", "--threads", "1", "--workers", "0",
                 "--no-progress", "--model-kwargs", "{embed_dim: 16, depth: 1, num_heads: 2}",
                 "--output", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= row["test_map"] <= 100.0 and 0.0 <= row["test_acc"] <= 100.0
    assert row["alpha_mean"] is not None  # PAL ran on multi-hot targets
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["config"]["multi_label"] is True
    capsys.readouterr()
    assert main(["eval", str(out / "best.pt"), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixpro: error:") and "multi-label checkpoint" in err
    assert main(["figures", "--checkpoint", str(out / "best.pt"), "--out",
                 str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixpro: error:") and "multi-label" in err and "\n" not in err


def test_mean_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score

    from mixpro.train.engine import mean_average_precision

    g = torch.Generator().manual_seed(0)
    scores, targets = torch.randn(40, 4, generator=g), (torch.rand(40, 4, generator=g) < 0.3)
    targets[:, 3] = False  # a class without positives is skipped
    ref = np.mean([average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
                   for c in range(3)])
    assert mean_average_precision(scores, targets.float()) == pytest.approx(ref, abs=1e-9)


def test_eval_reads_an_image_folder_whose_splits_have_synonym_names(tmp_path):
    """training/ + validation/: training finds them by timm's synonyms, and so does eval."""
    for split, n in (("training", 3), ("validation", 2)):
        for c in ("a", "b", "c"):
            d = tmp_path / "imf" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(_png(i))
    data = training_data(str(tmp_path / "imf"), img_size=16, in_chans=3)
    assert data.classes == ["a", "b", "c"] and len(data.test) == 6
    ev = eval_data(str(tmp_path / "imf"), img_size=(16, 16), in_chans=3, split="val")
    assert ev.classes == ["a", "b", "c"] and len(ev) == 6
