"""Data: idx reader, the Fashion-MNIST dataset (synthetic idx files), ImageFolder transforms."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mixpro.data import DatasetError
from mixpro.data import fashion_mnist as fm
from mixpro.data.folder import image_folder


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array as an idx file (the Fashion-MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fashion(root: Path, n_train: int = 160, n_test: int = 80, seed: int = 0) -> Path:
    """A learnable synthetic Fashion-MNIST: class k is a bright bar at row 2k plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4: 2 * k + 7, 4:24] = 255
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


def test_read_idx_roundtrip_gz_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    for gz in (True, False):
        p = write_idx(tmp_path / f"x{gz}", a, gz=gz)
        np.testing.assert_array_equal(fm.read_idx(p), a)


def test_read_idx_rejects_corrupt_files(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((5, 28, 28), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-7])  # truncated
    with pytest.raises(DatasetError, match="corrupt"):
        fm.read_idx(p)
    p.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DatasetError, match="magic"):
        fm.read_idx(p)
    bad_gz = tmp_path / "y.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot read"):
        fm.read_idx(bad_gz)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        fm.fashion_mnist(tmp_path / "nope", img_size=32, in_chans=1, translate=0, hflip=0)
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        fm.fashion_mnist(tmp_path / "half", img_size=32, in_chans=1, translate=0, hflip=0)


def test_env_var_points_elsewhere(tmp_path, monkeypatch):
    root = make_fashion(tmp_path / "fm")
    monkeypatch.setenv(fm.ENV_VAR, str(root))
    assert fm.resolve_root(None) == root
    assert fm.resolve_root(tmp_path / "x") == tmp_path / "x"  # --data-dir wins


def test_batches_are_padded_normalised_and_augmented_reproducibly(tmp_path):
    root = make_fashion(tmp_path / "fm")
    train, test = fm.fashion_mnist(root, img_size=32, in_chans=1, translate=2, hflip=0.5)
    assert len(train) == 160 and len(test) == 80
    x, y = test[[0, 1, 2]]
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2]
    background = (0.0 - fm.MEAN[0]) / fm.STD[0]
    assert torch.allclose(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], background))
    train.generator.manual_seed(5)
    a, _ = train[list(range(32))]
    train.generator.manual_seed(5)
    b, _ = train[list(range(32))]
    c, _ = train[list(range(32))]
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean, _ = test[list(range(32))]
    assert not torch.equal(a, clean[:32])  # augmentation happened


def test_channels_resize_and_fixed_subset(tmp_path):
    root = make_fashion(tmp_path / "fm")
    tr1, te = fm.fashion_mnist(root, img_size=16, in_chans=3, translate=0, hflip=0,
                               train_subset=50, subset_seed=3)
    tr2, _ = fm.fashion_mnist(root, img_size=16, in_chans=3, translate=0, hflip=0,
                              train_subset=50, subset_seed=3)
    x, _ = te[[0, 1]]
    assert x.shape == (2, 3, 16, 16) and torch.equal(x[:, 0], x[:, 2])
    assert len(tr1) == 50 and torch.equal(tr1.labels, tr2.labels)
    with pytest.raises(DatasetError, match="train_subset"):
        fm.fashion_mnist(root, img_size=32, in_chans=1, translate=0, hflip=0, train_subset=999)


def test_held_out_classes_leave_train_and_test_with_renumbered_labels(tmp_path):
    root = make_fashion(tmp_path / "fm", n_train=200, n_test=100)
    tr, te = fm.fashion_mnist(root, img_size=32, in_chans=1, translate=0, hflip=0,
                              holdout_classes=[9, 3])
    assert fm.class_split([9, 3]) == ([0, 1, 2, 4, 5, 6, 7, 8], [3, 9])
    assert len(tr) == 160 and len(te) == 80
    assert torch.bincount(tr.labels).tolist() == [20] * 8
    # synthetic class k has its bright bar at rows 2k+4..2k+6 (+2 padding): label 3 is class 4
    x, y = tr[list(range(len(tr)))]
    for new, old in enumerate([0, 1, 2, 4, 5, 6, 7, 8]):
        rows = x[y == new, 0, :, 8:26].mean(dim=(0, 2))
        assert int(rows.argmax()) in range(2 * old + 6, 2 * old + 9)
    for bad in ([10], [1, 1], [-1], ["a"], list(range(9))):
        with pytest.raises(DatasetError, match="holdout_classes"):
            fm.class_split(bad)


def test_real_fashion_mnist_test_split_is_installed():
    x, y = fm.load_split(fm.resolve_root(None), "test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y).tolist() == [1000] * 10


def _png_tree(root: Path, classes=("cat", "dog"), n=3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    d / f"{i}.png")
    return root


def test_image_folder_with_timm_transforms(tmp_path):
    root = _png_tree(tmp_path / "imgs")
    train, val, classes = image_folder(root, img_size=32, auto_augment="rand-m9-mstd0.5-inc1",
                                       re_prob=0.25)
    assert classes == ["cat", "dog"] and len(train) == 6 and len(val) == 6
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)
    xv, _ = val[0]
    assert xv.shape == (3, 32, 32)
    assert "RandAugment" in repr(train.transform)


def test_image_folder_bad_layouts(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        image_folder(tmp_path / "none", img_size=32)
    root = _png_tree(tmp_path / "imgs")
    import shutil

    shutil.rmtree(root / "val" / "dog")
    with pytest.raises(DatasetError, match="same class folders"):
        image_folder(root, img_size=32)
    shutil.rmtree(root / "val")
    with pytest.raises(DatasetError, match="val"):
        image_folder(root, img_size=32)


def test_image_folder_classes_come_from_timm_in_natural_order(tmp_path):
    root = _png_tree(tmp_path / "imgs", classes=("c1", "c2", "c10"), n=2)
    train, val, classes = image_folder(root, img_size=32)
    assert classes == ["c1", "c2", "c10"]  # timm's natural sort, not alphabetical
    assert train.reader.class_to_idx == {"c1": 0, "c2": 1, "c10": 2}
    for ds in (train, val):
        for path, label in ds.reader.samples:
            assert Path(path).parent.name == classes[label]


def test_image_folder_layout_errors_name_the_culprit(tmp_path):
    from PIL import Image

    root = _png_tree(tmp_path / "a")
    (root / "train" / "empty").mkdir()  # an empty class folder in train/ only
    with pytest.raises(DatasetError, match=r"class folder .*train/empty holds no images"):
        image_folder(root, img_size=32)
    root = _png_tree(tmp_path / "b")
    Image.new("RGB", (8, 8)).save(root / "train" / "stray.png")
    with pytest.raises(DatasetError, match=r"train/stray.png: an image outside a class folder"):
        image_folder(root, img_size=32)
    root = _png_tree(tmp_path / "c")
    (root / "train" / "cat" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "sub" / "x.png")
    with pytest.raises(DatasetError, match=r"cat/sub: a nested folder"):
        image_folder(root, img_size=32)
    root = _png_tree(tmp_path / "d")
    (root / "val" / "cat").rename(root / "val" / "kat")
    with pytest.raises(DatasetError, match=r"val/kat has no counterpart in train/"):
        image_folder(root, img_size=32)


def test_unreadable_image_is_named_in_the_warning(tmp_path, caplog):
    root = _png_tree(tmp_path / "imgs")
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    train, _, _ = image_folder(root, img_size=32)
    index = [p for p, _ in train.reader.samples].index(str(bad))
    with caplog.at_level("WARNING"):
        x, y = train[index]
    assert x.shape == (3, 32, 32)
    assert str(bad) in caplog.text and "skipped unreadable image" in caplog.text


class _Breaks(torch.utils.data.Dataset):
    """Ten samples; index 6 (or any batch holding it) fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error, self.classes = error, ["a", "b"]

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index):
        rows = index if isinstance(index, list) else [index]
        if 6 in rows:
            raise self.error
        x = torch.tensor([float(i) for i in rows])
        return (x, torch.tensor(rows)) if isinstance(index, list) else (x[0], rows[0])


@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_workers_dataset_error_stays_one_line(batched, workers, subset):
    from torch.utils.data import BatchSampler, SequentialSampler, Subset

    from mixpro.data.loading import DatasetLoader

    msg = "/data/val/a/29.png: 20 consecutive images could not be read"
    ds = _Breaks(DatasetError(msg))
    if subset:  # torch's Subset has __getitems__, which torch's fetcher calls instead
        ds = Subset(ds, range(10))
        ds.classes = ["a", "b"]
    kw = (dict(sampler=BatchSampler(SequentialSampler(ds), 4, drop_last=False),
               batch_size=None) if batched else dict(batch_size=4))
    loader = DatasetLoader(ds, num_workers=workers, **kw)
    assert len(loader.dataset) == 10 and loader.dataset.classes == ["a", "b"]
    seen = []
    with pytest.raises(DatasetError) as info:
        for _x, y in loader:
            seen.append(y.tolist())
    assert str(info.value) == msg  # the message itself, not a worker's traceback
    assert seen == [[0, 1, 2, 3]]  # the batches before the failing one arrived intact
    # a bug is not a dataset error: it keeps torch's report (with the worker's traceback)
    bug = _Breaks(KeyError("oops"))
    loader = DatasetLoader(Subset(bug, range(10)) if subset else bug, num_workers=workers, **kw)
    with pytest.raises(KeyError, match="oops") as info:
        list(loader)
    assert ("Caught KeyError in DataLoader worker" in str(info.value)) == (workers > 0)


def test_the_one_line_loader_keeps_torchs_semantics():
    """What torch's DataLoader does with the same arguments, DatasetLoader does too."""
    from torch.utils.data import DataLoader, IterableDataset

    from mixpro.data.loading import DatasetLoader

    ds = _Breaks(DatasetError("bad"))
    kw = dict(batch_size=None, batch_sampler=None, sampler=range(5), num_workers=1)
    got = [y for _x, y in DatasetLoader(ds, **kw)]  # single samples, converted, not collated
    assert got == [y for _x, y in DataLoader(ds, **kw)] == [0, 1, 2, 3, 4]
    loader = DatasetLoader(ds, batch_size=4, num_workers=1)
    loader.dataset.classes = ["x", "y"]  # a write reaches the dataset the workers read
    assert ds.classes == ["x", "y"] and len(iter(loader)) == len(loader) == 3

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    assert [b.tolist() for b in DatasetLoader(Stream(), batch_size=2, num_workers=1)] == [
        [0, 1], [2]]


def test_the_apps_load_through_the_one_line_loader():
    from mixpro.data.loading import DatasetLoader
    from mixpro.evaluate.run import _loader
    from mixpro.train import loaders, recipe
    from mixpro.train.distributed import DistInfo

    ds = _Breaks(DatasetError("x"))
    assert isinstance(_loader(ds, False, 4, 1), DatasetLoader)
    cfg = recipe.Recipe(batch_size=4, eval_batch_size=4, workers=1)
    info = DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    tl, vl, *_ = loaders.loaders(cfg, ds, ds, False, info)
    assert isinstance(tl, DatasetLoader) and isinstance(vl, DatasetLoader)


def test_folder_run_checkpoint_names_classes_and_eval_accepts_it(tmp_path):
    from mixpro.cli import main
    from mixpro.train import run
    from mixpro.train.recipe import load_recipe

    root = _png_tree(tmp_path / "imgs", classes=("c1", "c2", "c10"), n=4)
    cfg = load_recipe(None, dict(data=str(root), img_size=16, epochs=1, warmup_epochs=0,
                                 batch_size=4, progress=False, threads=1, method="cutmix",
                                 model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2},
                                 output=str(tmp_path / "r")))
    run.train(cfg)
    ck = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert ck["config"]["classes"] == ["c1", "c2", "c10"]
    assert main(["eval", str(tmp_path / "r" / "best.pt"), "--evals", "clean", "--calib-bin", "2",
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 0
