"""The data path: splits as uint8 tensors, batched per-image augmentation, determinism, ImageFolder and its cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet import data as data_module
from alexnet.config import compose, to_typed
from alexnet.data import (DataError, Loader, Split, crop_and_flip, crop_boxes, load_dataset, resized_crops,
                          split_train_val, synthetic_images)


def synthetic_cfg(*overrides):
    return to_typed(compose(["data=synthetic", *overrides])).data


def loader(split, train=True, seed=0, input_size=32, **kw) -> Loader:
    return Loader(split, batch_size=64, input_size=input_size, mean=[0.5] * 3, std=[0.25] * 3,
                  device=torch.device("cpu"), train=train, random_crop=train, hflip=train, seed=seed, **kw)


def test_synthetic_splits_are_uint8_tensors_and_deterministic():
    ds = load_dataset(synthetic_cfg())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4500, 500, 1000)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) == set(range(10))
    again = load_dataset(synthetic_cfg())
    assert torch.equal(ds.train.images, again.train.images) and torch.equal(ds.test.labels, again.test.labels)


def test_split_is_fixed_by_split_seed_and_disjoint():
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2), torch.arange(100))
    train, val = split_train_val(split, 10, seed=0)
    assert len(train) == 90 and len(val) == 10
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert torch.equal(val.labels, split_train_val(split, 10, seed=0)[1].labels)
    assert not torch.equal(val.labels, split_train_val(split, 10, seed=1)[1].labels)
    with pytest.raises(DataError, match="data.val_size=100 leaves no training images"):
        split_train_val(split, 100, seed=0)


def test_batches_are_normalized_floats_at_input_size():
    ds = load_dataset(synthetic_cfg())
    for size in (32, 67, 224):
        x, y = next(iter(loader(ds.val, train=False, input_size=size)))
        assert x.dtype == torch.float32 and x.shape == (64, 3, size, size) and y.shape == (64,)
        assert -2.0 - 1e-5 <= x.min() and x.max() <= 2.0 + 1e-5  # (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25
    x, _ = next(iter(loader(ds.val, train=False)))
    expected = (ds.val.images[:64].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)


def test_augmentation_differs_per_image():
    # The same image 64 times: each copy must get its own crop and flip.
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    split = Split(image.expand(64, 3, 32, 32).contiguous(), torch.zeros(64, dtype=torch.int64))
    x, _ = next(iter(loader(split)))
    distinct = {tuple(x[i].flatten()[:200].tolist()) for i in range(64)}
    assert len(distinct) > 20  # 81 crops x 2 flips possible


def test_crop_and_flip_is_a_window_of_the_padded_image_mirrored_where_asked():
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    dy, dx, flip = torch.tensor([0, 4, 2, 1]), torch.tensor([3, 0, 2, 4]), torch.tensor([False, True, True, False])
    out = crop_and_flip(padded, 8, dy, dx, flip)
    for i in range(4):
        window = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], window.flip(2) if flip[i] else window)
    assert torch.equal(out[2], images[2].flip(2))  # centred: the image itself


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    ds = load_dataset(synthetic_cfg())
    a, b, c = loader(ds.train, seed=3), loader(ds.train, seed=3), loader(ds.train, seed=4)
    (xa, ya), (xb, yb), (_, yc) = next(iter(a)), next(iter(b)), next(iter(c))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(ya, yc)
    assert not torch.equal(next(iter(a.batches(epoch=1)))[1], ya)


def test_an_epoch_continues_exactly_from_a_saved_generator_state():
    ds = load_dataset(synthetic_cfg())
    full = [x for x, _ in loader(ds.train, seed=5).batches(epoch=2)]
    first = loader(ds.train, seed=5)
    batches = first.batches(epoch=2)
    for _ in range(3):
        next(batches)
    state = first.generator_state()
    rest = [x for x, _ in loader(ds.train, seed=5).batches(epoch=2, start=3, generator_state=state)]
    assert len(rest) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))


@pytest.mark.parametrize("levers", [{}, {"random_erasing": 0.5, "crop_scale": 0.35}])
def test_ranks_share_out_the_global_batch_of_a_single_process(levers):
    ds = load_dataset(synthetic_cfg())
    (single,) = [next(iter(loader(ds.train, seed=2, **levers).batches(epoch=1)))]
    shares = [next(iter(loader(ds.train, seed=2, rank=r, world_size=2, **levers).batches(epoch=1))) for r in (0, 1)]
    assert all(len(x) == 32 for x, _ in shares)
    merged = torch.empty_like(single[0])
    merged[0::2], merged[1::2] = shares[0][0], shares[1][0]
    assert torch.equal(merged, single[0])  # the same images, with the same crops and flips


def test_eval_loader_is_ordered_and_complete():
    ds = load_dataset(synthetic_cfg())
    batches = list(loader(ds.test, train=False))
    assert len(batches) == 16 and torch.equal(torch.cat([y for _, y in batches]), ds.test.labels)
    assert len(loader(ds.test, train=False, max_batches=3)) == 3


def make_imagefolder(root: Path, classes=("cat", "dog", "frog"), per_class=6, size=32) -> Path:
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g)
                Image.fromarray(pixels.numpy()).save(root / split / c / f"{i:04d}.png")
    return root


def imagefolder_cfg(root, tmp_path, *overrides):
    return to_typed(compose(["data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.val_size=3", *overrides])).data


def test_imagefolder_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "ds")
    ds = load_dataset(imagefolder_cfg(root, tmp_path))
    assert ds.classes == ["cat", "dog", "frog"] and (len(ds.train), len(ds.val), len(ds.test)) == (15, 3, 18)
    assert ds.train.images.dtype == torch.uint8
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "_decode", no_decoding)
    again = load_dataset(imagefolder_cfg(root, tmp_path))
    assert torch.equal(again.test.images, ds.test.images)


def test_hidden_folders_are_not_classes(tmp_path):
    """A notebook's .ipynb_checkpoints (or any hidden folder or file) in the tree is not a class or an image."""
    root = make_imagefolder(tmp_path / "ds")
    for split in ("train", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
        (root / split / "cat" / "._0000.png").write_bytes(b"macOS metadata, not an image")
    assert load_dataset(imagefolder_cfg(root, tmp_path)).classes == ["cat", "dog", "frog"]


def test_imagefolder_resizes_to_image_size(tmp_path):
    root = make_imagefolder(tmp_path / "ds", size=40)
    ds = load_dataset(imagefolder_cfg(root, tmp_path))
    assert ds.train.images.shape[1:] == (3, 32, 32)


def test_imagefolder_matches_the_lossless_cifar_sample(shared, tmp_path):
    """Decoded JPEGs from the shared copy are the CIFAR-10 images (mild JPEG noise), in the right classes."""
    import numpy as np
    import tarfile

    sample = np.load(shared / "data" / "cifar10-test-lossless-sample.npz")
    names = [str(n) for n in sample["jpeg_names"][:50]]
    with tarfile.open(shared / "data" / "cifar10-jpeg.tar.gz") as tar:
        members = [tar.getmember(n) for n in names] + [tar.getmember(f"train/{n.split('/')[1]}/0000.jpg")
                                                         for n in names]
        tar.extractall(tmp_path / "ds", members=members, filter="data")
    ds = load_dataset(imagefolder_cfg(tmp_path / "ds", tmp_path))
    by_class = {c: i for i, c in enumerate(ds.classes)}
    decoded = data_module._decode([[tmp_path / "ds" / n] for n in names], 32)
    original = torch.from_numpy(sample["images"][:50]).permute(0, 3, 1, 2).float()
    assert (decoded.images.float() - original).abs().mean() < 10  # README: mean abs difference 5.8 of 255
    # Sorted class folders give CIFAR-10's own label order (airplane=0 ... truck=9).
    assert [by_class[n.split("/")[1]] for n in names] == sample["labels"][:50].tolist()


@pytest.mark.parametrize("damage,message", [
    (lambda r: None, "does not exist"),
    (lambda r: make_imagefolder(r) and __import__("shutil").rmtree(r / "test"), "test is not a directory"),
    (lambda r: make_imagefolder(r) and (r / "train" / "empty").mkdir(), "holds no images"),
    (lambda r: make_imagefolder(r) and (r / "test" / "frog").rename(r / "test" / "toad"), "has classes"),
    (lambda r: make_imagefolder(r) and (r / "train" / "cat" / "0001.png").write_bytes(b"not a png"),
     "cannot read image"),
])
def test_imagefolder_layout_errors_name_the_problem(tmp_path, damage, message):
    root = tmp_path / "ds"
    damage(root)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(imagefolder_cfg(root, tmp_path))
    assert str(root) in str(e.value)


def test_cifar10_missing_without_download_names_the_fix(tmp_path):
    cfg = to_typed(compose(["data=cifar10", f"data.root={tmp_path}", "data.download=false"])).data
    with pytest.raises(DataError, match="CIFAR-10 not found or corrupted") as e:
        load_dataset(cfg)
    assert "data.download=true" in str(e.value) and "data=synthetic" in str(e.value)


def test_training_drops_the_partial_last_batch_and_evaluation_keeps_every_image():
    split = synthetic_images(100, 0.3, torch.Generator().manual_seed(0))
    train = list(Loader(split, 32, 32, [0.5] * 3, [0.25] * 3, torch.device('cpu'), train=True, hflip=True).batches(0))
    assert [len(y) for _, y in train] == [32, 32, 32]  # one shape for compile and cuDNN
    assert [len(y) for _, y in Loader(split, 32, 32, [0.5] * 3, [0.25] * 3, torch.device('cpu'))] == [32, 32, 32, 4]
    one_batch = Loader(split, 128, 32, [0.5] * 3, [0.25] * 3, torch.device('cpu'), train=True).batches(0)
    assert [len(y) for _, y in one_batch] == [100]


@pytest.mark.parametrize("size", [32, 224])
def test_batches_made_in_bf16_and_resized_last_stay_within_bf16_rounding(size):
    # The GPU order (cast and go channels_last at 32x32, then resize) against the fp32 order.
    split = synthetic_images(64, 0.3, torch.Generator().manual_seed(0))
    args = (split, 16, size, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    (fp32, _), (bf16, _) = (next(Loader(*args, train=True, random_crop=True, hflip=True, channels_last=True,
                                        dtype=dtype).batches(0)) for dtype in (torch.float32, torch.bfloat16))
    assert bf16.dtype == torch.bfloat16 and bf16.shape == fp32.shape == (16, 3, size, size)
    assert bf16.is_contiguous(memory_format=torch.channels_last)
    error = (bf16.float() - fp32).abs().max() / fp32.abs().max()
    assert 0 < error < 2**-7, error  # bf16 keeps 8 significant bits


@pytest.mark.parametrize("download", [False, True])
def test_a_corrupt_cifar_archive_is_called_corrupt(tmp_path, monkeypatch, download):
    """Before: 'copy cifar-10-python.tar.gz into data.root', while a damaged one was there already."""
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise OSError("no network here")

    monkeypatch.setattr(tv_utils, "download_url", no_network)  # so the test never downloads, online or not
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"the first bytes of a download cut short")
    cfg = to_typed(compose(["data=cifar10", f"data.root={tmp_path}", f"data.download={str(download).lower()}"]))
    with pytest.raises(DataError, match="cifar-10-python.tar.gz is there but corrupt"):
        load_dataset(cfg.data)


def test_a_failed_download_leaves_no_folder_or_partial_archive_behind(tmp_path, monkeypatch):
    """Cut off midway: the partial archive, data.root's new folders and the run's outputs/ all go; the error says
    what to do. A folder that was there before stays."""
    import alexnet
    import torchvision.datasets.utils as tv_utils

    def cut_off(url, root, filename=None, md5=None, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision's own download_url does
        Path(root, filename or "cifar-10-python.tar.gz").write_bytes(b"the first bytes")
        raise OSError("connection reset by peer")

    monkeypatch.setattr(tv_utils, "download_url", cut_off)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/... is expanded as torchvision expands it
    (tmp_path / "kept").mkdir()
    for root in ("new/cifar", "kept", "~/from-home/cifar"):  # ~ must be quoted for Hydra's grammar
        with pytest.raises(DataError, match=f"could not download CIFAR-10 into data.root={root}: connection reset"):
            alexnet.train(["data=cifar10", f"data.root='{root}'", "debug=smoke", "wandb.mode=disabled"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not any((tmp_path / "kept").iterdir())


# --- random erasing (issue 16's augmentation lever) -------------------------------------------------------------
def test_random_erasing_zeroes_one_box_per_chosen_image_as_torchvision_draws_it():
    """p=1 on one image repeated: each copy gets one rectangle of normalized zeros (the mean pixel), 2-33% of the
    image up to rounding, aspect 0.3-3.3, placed anywhere it fits; the rest of the image untouched."""
    image = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)  # normalized: (200/255 - 0.5) / 0.25 > 0 everywhere
    split = Split(image.expand(512, 3, 32, 32).contiguous(), torch.zeros(512, dtype=torch.int64))
    erased = Loader(split, 512, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True, random_erasing=1.0)
    x, _ = next(iter(erased))
    zero = x == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # the same box on every channel
    box = zero[:, 0]
    rows, cols = box.any(2), box.any(1)  # which rows and columns of each image hold the box
    heights, widths = rows.sum(1).float(), cols.sum(1).float()
    assert torch.equal(box.sum((1, 2)).float(), heights * widths)  # one solid rectangle, nothing else
    fraction = heights * widths / 1024
    assert (fraction > 0).float().mean() > 0.95  # nearly every try fits in 10 at these scales
    kept = fraction[fraction > 0]
    # U(0.02, 0.33) of 1024 pixels (mean 0.175), then h and w rounded: up to about half a side more or less
    assert kept.min() >= 0.012 and kept.max() <= 0.36 and 0.15 < kept.mean() < 0.2
    aspect = (heights / widths)[fraction > 0]
    assert aspect.min() >= 0.25 and aspect.max() <= 4.0  # 0.3-3.3 up to rounding on a 32-pixel side
    tops = rows.float().argmax(1)[fraction > 0]
    assert tops.min() == 0 and (tops + heights[fraction > 0]).max() == 32  # every position reachable


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_random_erasing_hits_a_share_p_of_the_images_and_only_in_training(p):
    split = Split(torch.full((2000, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(2000, dtype=torch.int64))
    train = Loader(split, 2000, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True, random_erasing=p)
    x, _ = next(iter(train))
    assert abs((x == 0).flatten(1).any(1).float().mean().item() - p) < 0.04
    evaluation = Loader(split, 2000, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), random_erasing=p)
    assert not (next(iter(evaluation))[0] == 0).any()


@pytest.mark.parametrize("lever", [{"random_erasing": 0.5}, {"crop_scale": 0.35}])
def test_an_augmentation_lever_off_leaves_the_stream_as_it_was(lever):
    """Drawn after crop and flip: with it off, every existing run's batches are bit for bit unchanged; with it
    on, a resumed epoch still continues exactly (the draws come from the checkpointed generator)."""
    (name, value), = lever.items()
    off = {"random_erasing": 0.0, "crop_scale": 1.0}[name]
    ds = load_dataset(synthetic_cfg())
    plain = [x for x, _ in loader(ds.train).batches(3)][:3]
    unchanged = [x for x, _ in loader(ds.train, **{name: off}).batches(3)][:3]
    assert all(torch.equal(a, b) for a, b in zip(plain, unchanged))
    on = loader(ds.train, **lever)
    batches = on.batches(3)
    first = [next(batches)[0] for _ in range(2)]
    state = on.generator_state()
    rest = next(batches)[0]
    again = loader(ds.train, **lever)
    assert torch.equal(next(again.batches(3, start=2, generator_state=state))[0], rest)
    assert not torch.equal(first[0], plain[0])
    evaluation = loader(ds.val, train=False, **lever)
    assert torch.equal(next(iter(evaluation))[0], next(iter(loader(ds.val, train=False)))[0])


@pytest.mark.parametrize("override, message", [
    ("data.random_erasing=1.5", r"data.random_erasing=1.5 is not allowed: a probability in \[0, 1\]"),
    ("data.crop_scale=0.0", r"data.crop_scale=0.0 is not allowed: a share of the image in \(0, 1\]"),
    ("data.crop_scale=1.2", r"data.crop_scale=1.2 is not allowed: a share of the image in \(0, 1\]")])
def test_augmentation_levers_refuse_values_outside_their_range(override, message):
    with pytest.raises(Exception, match=message):
        synthetic_cfg(override)


# --- resized crops (issue 16's crop-scale lever) -----------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_resized_crops_are_torchvision_resized_crop(data):
    """Any box inside the image, resized back to the image side by one batched grid_sample, gives what
    torchvision's resized_crop gives for that image and box."""
    side = data.draw(st.sampled_from([8, 32]))
    height, width = data.draw(st.integers(1, side)), data.draw(st.integers(1, side))
    top, left = data.draw(st.integers(0, side - height)), data.draw(st.integers(0, side - width))
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    boxes = torch.tensor([[top, left, height, width], [0, 0, side, side]])
    ours = resized_crops(images, boxes, side)
    theirs = TF.resized_crop(images[0], top, left, height, width, [side, side], antialias=True)
    torch.testing.assert_close(ours[0], theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], images[1], atol=1e-5, rtol=1e-5)  # the whole image: itself


@pytest.mark.parametrize("smallest", [0.35, 0.99])
def test_crop_boxes_are_drawn_as_torchvision_draws_random_resized_crop(smallest):
    """The same distribution as RandomResizedCrop.get_params(scale=(smallest, 1)) on a 32x32 image, over 4000 draws
    each: area share, aspect, corner, and how often a box spans the image (a try that fits it at 0.35, mostly the
    fallback at 0.99); every box inside the image."""
    n, side = 4000, 32
    ours = crop_boxes(n, side, smallest, torch.Generator().manual_seed(0), torch.device("cpu")).float()
    torch.manual_seed(0)
    image = torch.zeros(3, side, side)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(image, [smallest, 1.0], [3 / 4, 4 / 3])
                           for _ in range(n)]).float()
    for boxes in (ours, theirs):
        top, left, height, width = boxes.unbind(1)
        assert top.min() >= 0 and left.min() >= 0 and (top + height).max() <= side and (left + width).max() <= side
    def stats(boxes):
        top, left, height, width = boxes.unbind(1)
        share = height * width / side**2
        spans = ((height == side) | (width == side)).float().mean()
        return torch.stack([share.mean(), share.min(), (height / width).log().mean(), top.mean(), left.mean(), spans])
    torch.testing.assert_close(stats(ours), stats(theirs), atol=0.03, rtol=0.05)


def test_a_crop_scale_below_one_zooms_into_the_training_images():
    """With crop_scale on, a training image is a box of itself enlarged: a checkerboard of 1-pixel squares comes
    out with fewer sign changes along a row (the squares got wider); evaluation is never cropped."""
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 255).to(torch.uint8)
    split = Split(board.expand(256, 3, 32, 32).contiguous(), torch.zeros(256, dtype=torch.int64))
    def sign_changes(**kw):
        x, _ = next(iter(Loader(split, 256, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), **kw)))
        return (x[:, 0, :, 1:].sign() != x[:, 0, :, :-1].sign()).float().sum((1, 2))
    assert torch.equal(sign_changes(train=True), torch.full((256,), 32.0 * 31))  # no crop: every neighbour flips
    zoomed = sign_changes(train=True, crop_scale=0.25)
    assert zoomed.mean() < 0.8 * 32 * 31 and (zoomed < 32 * 31).float().mean() > 0.9
    assert torch.equal(sign_changes(crop_scale=0.25), torch.full((256,), 32.0 * 31))


def test_every_training_loader_gets_the_configs_augmentation():
    """The run's and the benchmark's training loaders take their augmentation from one place, the config's."""
    from alexnet.bench import our_loader
    from alexnet.distributed import Dist
    from alexnet.training import make_loaders

    cfg = to_typed(compose(["data=synthetic", "data.random_crop=false", "data.crop_padding=2", "data.hflip=false",
                            "data.random_erasing=0.5", "data.crop_scale=0.35"]))
    ds = load_dataset(cfg.data)
    expected = {"random_crop": False, "crop_padding": 2, "hflip": False, "random_erasing": 0.5, "crop_scale": 0.35}
    cpu = torch.device("cpu")
    for train in (make_loaders(cfg, ds, cpu, Dist()).train, our_loader(ds.train, cfg, cpu)):
        assert {key: getattr(train, key) for key in expected} == expected
