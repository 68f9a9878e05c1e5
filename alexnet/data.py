"""Data: each split held as one uint8 tensor, batched augmentation on the training device.

Sources (`data.name`): torchvision's CIFAR-10, any ImageFolder-style tree (decoded once, then cached as
tensors), and a synthetic in-memory set. `Loader` shuffles, crops, flips, resizes and normalizes whole
batches with tensor operations; there is no per-image Python or PIL work while training.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from alexnet.errors import UserError, missing_folders, remove_if_empty

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 2  # bump when the cached tensors would differ (layout, decoder)
SYNTHETIC_SEED = 20121203  # the synthetic set is the same for every run: it is data, not randomness


class DataError(UserError):
    """Missing, unreadable or badly laid out data."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list[str]


# ---------------------------------------------------------------------------------------------- sources

def _corrupt_cifar_archive(root: str) -> str | None:
    """A message if data.root holds cifar-10-python.tar.gz but not the real one (its md5 differs)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    archive = Path(root).expanduser() / CIFAR10.filename
    if archive.is_file() and not check_integrity(str(archive), CIFAR10.tgz_md5):
        return (f"{archive} is there but corrupt (its md5 is not CIFAR-10's {CIFAR10.tgz_md5}: a download cut "
                f"short?). Fix: replace it with a good copy (or delete it and pass data.download=true), or train on "
                f"another source: data=imagefolder data.root=DIR, or data=synthetic.")
    return None


def _cifar10(cfg) -> tuple[Split, Split, list[str]]:
    import torchvision

    root = Path(cfg.root).expanduser()  # as torchvision reads it
    archive = root / torchvision.datasets.CIFAR10.filename

    def load(train: bool):
        new_folders, had_archive = missing_folders(root), archive.exists()
        try:
            ds = torchvision.datasets.CIFAR10(cfg.root, train=train, download=cfg.download)
        except (RuntimeError, OSError) as e:
            if not had_archive:  # a download cut off midway leaves a partial archive: not ours to keep
                archive.unlink(missing_ok=True)
            remove_if_empty(new_folders)
            if corrupt := _corrupt_cifar_archive(root):
                raise DataError(corrupt) from e
            if isinstance(e, OSError):
                raise _download_failed(cfg, e) from e
            if cfg.download and not had_archive:  # this run's download failed torchvision's check: removed
                raise DataError(
                    f"the CIFAR-10 download into data.root={cfg.root} did not pass torchvision's integrity check "
                    f"({e}); the partial download was removed. Fix: run the same command again, or copy "
                    f"cifar-10-python.tar.gz there, or train on data=imagefolder data.root=DIR or data=synthetic."
                ) from e
            # not there (download off) or failed torchvision's integrity check
            raise DataError(
                f"CIFAR-10 not found or corrupted in data.root={cfg.root} ({e}). Fix: pass data.download=true "
                f"to fetch it, put cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ there, or train "
                f"on another source: data=imagefolder data.root=DIR, or data=synthetic.") from e
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N x 32 x 32 x 3 -> N x 3 x 32 x 32
        return Split(images, torch.tensor(ds.targets, dtype=torch.int64)), list(ds.classes)

    (train, classes), (test, _) = load(True), load(False)
    return train, test, classes


def _download_failed(cfg, e: OSError) -> DataError:  # no network, refused, disk full
    return DataError(
        f"could not download CIFAR-10 into data.root={cfg.root}: {e}. Fix: on a machine without "
        f"internet, copy cifar-10-python.tar.gz into {cfg.root}, or use a local copy laid out as "
        f"train/<class>/ and test/<class>/ with data=imagefolder data.root=DIR, or data=synthetic.")


def _list_images(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is not a directory. Fix: data.root must hold train/<class>/* and "
                        f"test/<class>/* image files (e.g. `tar xzf cifar10-jpeg.tar.gz -C DIR`, then data.root=DIR).")
    # hidden folders (.ipynb_checkpoints, .DS_Store's kin) are not classes
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{split_dir} has no class folders. Fix: lay images out as {split_dir}/<class>/<image>.")
    files = []
    for d in class_dirs:
        images = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not images:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                            f"Fix: add its images or remove the folder.")
        files.append(images)
    return [d.name for d in class_dirs], files


def _decode(files: list[list[Path]], size: int) -> Split:
    """Decode every file once (Pillow), resized to size x size where it differs; label = class index."""
    import numpy as np
    from PIL import Image

    images = np.empty((sum(len(f) for f in files), size, size, 3), dtype=np.uint8)
    labels, i = [], 0
    for label, class_files in enumerate(files):
        for path in class_files:
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    if image.size != (size, size):
                        image = image.resize((size, size), Image.Resampling.BILINEAR)
                    images[i] = np.asarray(image)
            except Exception as e:
                raise DataError(f"cannot read image {path}: {e}. Fix: replace or delete the file.") from e
            labels.append(label)
            i += 1
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64))


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet"


def _imagefolder_files(cfg) -> tuple[Path, list[str], list[list[Path]], list[list[Path]]]:
    """(root, classes, train files, test files) of an ImageFolder tree, its layout checked; nothing decoded."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root} does not exist. Fix: point data.root at a folder holding "
                        f"train/<class>/* and test/<class>/* (the JPEG CIFAR-10 copy: `tar xzf "
                        f"cifar10-jpeg.tar.gz -C DIR`, then data.root=DIR).")
    classes, train_files = _list_images(root / "train")
    test_classes, test_files = _list_images(root / "test")
    if test_classes != classes:
        raise DataError(f"{root}/test has classes {test_classes} but {root}/train has {classes}. "
                        f"Fix: give both splits the same class folders.")
    return root, classes, train_files, test_files


def _imagefolder(cfg) -> tuple[Split, Split, list[str]]:
    root, classes, train_files, test_files = _imagefolder_files(cfg)

    # The cache key covers every file's path, size and mtime, so an edited data set is decoded again.
    key = hashlib.sha256(f"v{CACHE_VERSION} size={cfg.image_size}".encode())
    for path in (p for class_files in train_files + test_files for p in class_files):
        stat = path.stat()
        key.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    cache_file = cache_dir / f"imagefolder-{key.hexdigest()[:20]}.pt"
    if cache_file.exists():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return Split(*cached["train"]), Split(*cached["test"]), cached["classes"]
        except Exception:
            pass  # unreadable cache: decode again and overwrite it

    train, test = _decode(train_files, cfg.image_size), _decode(test_files, cfg.image_size)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save({"train": (train.images, train.labels), "test": (test.images, test.labels),
                    "classes": classes}, tmp)
        os.replace(tmp, cache_file)  # atomic: a concurrent run never reads half a file
    except OSError:
        pass  # a read-only cache only costs the next run a decode
    return train, test, classes


def synthetic_images(n: int, noise: float, generator: torch.Generator, num_classes: int = 10) -> Split:
    """Class templates (smooth random colour blobs), randomly shifted, scaled and buried in Gaussian noise."""
    templates = torch.rand(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(SYNTHETIC_SEED))
    templates = F.interpolate(templates, size=(32, 32), mode="bicubic", align_corners=False)
    labels = torch.randint(num_classes, (n,), generator=generator)
    shifts = torch.randint(-3, 4, (n, 2), generator=generator)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
    images = torch.empty(n, 3, 32, 32)
    for i in range(n):  # made once per run, in well under a second for the default sizes
        images[i] = torch.roll(templates[labels[i]], shifts=tuple(shifts[i].tolist()), dims=(1, 2))
    images = 0.5 + contrast * (images - 0.5) + noise * torch.randn(images.shape, generator=generator)
    return Split((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def _synthetic(cfg) -> tuple[Split, Split, list[str]]:
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    train = synthetic_images(cfg.train_size, cfg.noise, generator)
    test = synthetic_images(cfg.test_size, cfg.noise, generator)
    return train, test, [f"class{i}" for i in range(10)]


SOURCES = {"cifar10": _cifar10, "imagefolder": _imagefolder, "synthetic": _synthetic}


def check_data(cfg) -> str:
    """The data source's checks, without decoding an image (for --validate); returns what it found."""
    if cfg.name == "synthetic":
        return f"synthetic: {cfg.train_size} train, {cfg.test_size} test images"
    if cfg.name == "imagefolder":
        root, classes, train_files, test_files = _imagefolder_files(cfg)
        n_train = sum(map(len, train_files))
        check_val_size(cfg.val_size, n_train)
        return (f"imagefolder {root}: {len(classes)} classes, {n_train} train and {sum(map(len, test_files))} "
                f"test images (not decoded)")
    from torchvision.datasets import CIFAR10

    if corrupt := _corrupt_cifar_archive(cfg.root):
        raise DataError(corrupt)
    if (Path(cfg.root) / CIFAR10.base_folder).is_dir() or (Path(cfg.root) / CIFAR10.filename).is_file():
        _cifar10(cfg)  # reads the batches, checking their integrity
        return f"cifar10 in {cfg.root}"
    if cfg.download:
        return f"cifar10: not in {cfg.root} yet, downloaded by the first run (about 170 MB)"
    raise DataError(f"CIFAR-10 is not in data.root={cfg.root} and data.download=false. Fix: pass "
                    f"data.download=true, or put cifar-10-python.tar.gz there.")


def check_val_size(val_size: int, images: int) -> None:
    if val_size >= images:
        raise DataError(f"data.val_size={val_size} leaves no training images ({images} in all). "
                        f"Fix: choose data.val_size < {images}.")


def split_train_val(split: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """A fixed random split: the same `seed` holds out the same images whatever the run's seed."""
    check_val_size(val_size, len(split))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return Split(split.images[train], split.labels[train]), Split(split.images[val], split.labels[val])


def load_dataset(cfg) -> Dataset:
    """The train/val/test splits for a `data` config node, on the CPU."""
    train, test, classes = SOURCES[cfg.name](cfg)
    train, val = split_train_val(train, cfg.val_size, cfg.split_seed)
    return Dataset(train, val, test, classes)


# ----------------------------------------------------------------------------------------------- batches

def crop_and_flip(padded: torch.Tensor, size: int, dy: torch.Tensor, dx: torch.Tensor,
                  flip: torch.Tensor) -> torch.Tensor:
    """The size x size window at (dy, dx) of each (already padded) image, mirrored where `flip` is set.

    Two gathers and nothing else: the flip is folded into the column indices, and the padding was done once.
    """
    n, c, _, width = padded.shape
    steps = torch.arange(size, device=padded.device)
    rows = (dy[:, None] + steps)[:, None, :, None].expand(n, c, size, width)
    cols = (dx[:, None] + torch.where(flip[:, None], steps.flip(0), steps))[:, None, None, :].expand(n, c, size, size)
    return padded.gather(2, rows).gather(3, cols)


BOX_TRIES = 10  # torchvision's RandomErasing and RandomResizedCrop each try 10 boxes
ERASING_SCALE, ERASING_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision's RandomErasing
# torchvision's RandomResizedCrop. random_boxes makes a box's height sqrt(area * ratio), as RandomErasing does;
# RandomResizedCrop makes it the width, which draws the same boxes only because this range is symmetric in log.
CROP_RATIO = (3 / 4, 4 / 3)


def random_boxes(n: int, side: int, scale: tuple, ratio: tuple, strictly_inside: bool,
                 generator: torch.Generator, device: torch.device) -> dict:
    """torchvision's box draw, shared by RandomErasing and RandomResizedCrop, for n side x side images at once:
    the first of 10 tries (area a U(scale) share of the image, log-uniform aspect in `ratio`) that fits, at a
    uniform place; `found` is False where none fits (the box is then meaningless)."""
    area = side * side * torch.empty(n, BOX_TRIES, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, BOX_TRIES, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    h = torch.sqrt(area * torch.exp(log_ratio)).round().long()
    w = torch.sqrt(area / torch.exp(log_ratio)).round().long()
    # RandomErasing wants the box strictly inside the image, RandomResizedCrop lets it be the whole image
    fits = ((h < side) & (w < side) if strictly_inside else (h <= side) & (w <= side)) & (h > 0) & (w > 0)
    found = fits.any(1)
    first = torch.where(found, fits.float().argmax(1), 0)
    h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    # the box's corner, uniform over the places it fits (as torch.randint(0, side - h + 1) per image)
    top = (torch.rand(n, generator=generator, device=device) * (side - h + 1)).long()
    left = (torch.rand(n, generator=generator, device=device) * (side - w + 1)).long()
    return {"found": found, "top": top, "left": left, "height": h, "width": w}


def erasing_boxes(n: int, side: int, p: float, generator: torch.Generator, device: torch.device) -> dict:
    """torchvision's RandomErasing draw: each image, with probability p, gets the first of 10 tries (area 2-33%,
    aspect 0.3-3.3) that fits inside it; none fits, none erased."""
    box = random_boxes(n, side, ERASING_SCALE, ERASING_RATIO, True, generator, device)
    box["erase"] = (torch.rand(n, generator=generator, device=device) < p) & box.pop("found")
    return box


def crop_boxes(n: int, side: int, smallest: float, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """torchvision's RandomResizedCrop draw (scale=(smallest, 1), ratio=(3/4, 4/3)) for n square images, as
    (n, 4) rows of top, left, height, width; where no try fits, the whole image (its fallback for a square)."""
    box = random_boxes(n, side, (smallest, 1.0), CROP_RATIO, False, generator, device)
    whole = torch.tensor([0, 0, side, side], device=device)
    drawn = torch.stack([box["top"], box["left"], box["height"], box["width"]], dim=1)
    return torch.where(box["found"][:, None], drawn, whole)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized to size x size in one grid_sample: the same samples as
    F.interpolate(bilinear, align_corners=False) on the cropped image, which is torchvision's resized_crop when
    it enlarges (a box is never larger than the image, so it always does here)."""
    steps = torch.arange(size, device=x.device, dtype=torch.float32) + 0.5

    def coordinates(start: torch.Tensor, length: torch.Tensor, extent: int) -> torch.Tensor:
        source = (steps * length[:, None] / size - 0.5).clamp(min=0)  # interpolate's source pixel, in the box
        source = torch.minimum(source, (length - 1)[:, None].float())
        return (start[:, None] + source) * 2 / (extent - 1) - 1  # in grid_sample's align_corners=True units

    top, left, height, width = boxes.unbind(1)
    ys, xs = coordinates(top, height, x.shape[-2]), coordinates(left, width, x.shape[-1])
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (n, size, size, x|y)
    # in fp32 whatever the batch's dtype: bf16 coordinates would be off by up to a quarter of a pixel
    crops = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return crops.to(x.dtype)


def erasing_mask(draws: dict, height: int, width: int) -> torch.Tensor:
    """(n, 1, height, width) booleans: True inside each image's box (where it is erased)."""
    rows = torch.arange(height, device=draws["top"].device)[None, :]
    cols = torch.arange(width, device=draws["top"].device)[None, :]
    inside_rows = (rows >= draws["top"][:, None]) & (rows < (draws["top"] + draws["height"])[:, None])
    inside_cols = (cols >= draws["left"][:, None]) & (cols < (draws["left"] + draws["width"])[:, None])
    return (draws["erase"][:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def training_augmentation(d) -> dict:
    """The Loader arguments of a `data` config's training augmentation: one list for every training loader."""
    return dict(random_crop=d.random_crop, crop_padding=d.crop_padding, hflip=d.hflip,
                random_erasing=d.random_erasing, crop_scale=d.crop_scale)


class Loader:
    """Iterates over one in-memory split in batches, ready for the model.

    Each epoch's order and augmentation come from a generator seeded by (seed, epoch), so an epoch's batches
    depend only on the seed and the epoch number; `generator_state()` after any batch, given back to
    `batches()`, continues the epoch exactly where it stopped.

    With several processes (DDP), `batch_size` is the global batch: every rank draws the whole batch's order and
    augmentation from the same generator and keeps its share (every world_size-th image), so the data a step
    sees is the same whatever the number of ranks.
    """

    def __init__(self, split: Split, batch_size: int, input_size: int, mean, std, device: torch.device,
                 train: bool = False, random_crop: bool = False, crop_padding: int = 4, hflip: bool = False,
                 random_erasing: float = 0.0, crop_scale: float = 1.0, seed: int = 0, max_batches: int | None = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 channels: int = 3):
        self.rank, self.world_size, self.channels_last, self.dtype = rank, world_size, channels_last, dtype
        self.extra_channels = channels - 3  # zero channels after RGB, for model.input_channels
        self.split = split.to(device)
        self.batch_size, self.input_size, self.device = batch_size, input_size, device
        self.train, self.random_crop, self.crop_padding, self.hflip = train, random_crop, crop_padding, hflip
        self.random_erasing = random_erasing if train else 0.0
        self.crop_scale = crop_scale if train else 1.0
        self.seed, self.max_batches, self.generator = seed, max_batches, None
        # Padded once here, so that a batch's crops are a gather (zeros: black borders, as torchvision's).
        self.padding = crop_padding if train and random_crop else 0
        self.padded = F.pad(self.split.images, (self.padding,) * 4) if self.padding else self.split.images
        # (x - mean) / std as one multiply-add, on 0..255 pixel values
        std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.scale, self.shift = 1 / std, -torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255 / std

    def __len__(self) -> int:
        # Training drops an epoch's partial last batch (its images come up in other epochs' full ones): a new batch
        # shape would make torch.compile recompile and cuDNN pick algorithms again. Evaluation keeps every image.
        n = len(self.split) // self.batch_size if self.train else math.ceil(len(self.split) / self.batch_size)
        n = max(n, 1)  # a split smaller than one batch still trains, on one partial batch
        return min(n, self.max_batches) if self.max_batches else n

    def augmentation(self, n: int, generator: torch.Generator | None) -> dict:
        """Random crop offsets and flips for a whole (global) batch of n images."""
        if generator is None:
            return {}
        draws, device, span = {}, self.device, 2 * self.padding + 1
        if self.padding:
            draws["dy"] = torch.randint(0, span, (n,), generator=generator, device=device)
            draws["dx"] = torch.randint(0, span, (n,), generator=generator, device=device)
        if self.hflip:
            draws["flip"] = torch.rand(n, generator=generator, device=device) < 0.5
        if self.random_erasing:  # drawn after the others: with it off, their stream is as before
            draws.update(erasing_boxes(n, self.split.images.shape[-1], self.random_erasing, generator, device))
        if self.crop_scale < 1:  # drawn last, for the same reason
            draws["crop_box"] = crop_boxes(n, self.split.images.shape[-1], self.crop_scale, generator, device)
        return draws

    def transform(self, index: torch.Tensor, draws: dict) -> torch.Tensor:
        """The images at `index` as a normalized float batch at input_size, augmented by `draws`."""
        if draws:
            n, size = len(index), self.split.images.shape[-1]
            centre = torch.full((n,), self.padding, device=self.device)
            x = crop_and_flip(self.padded[index], size, draws.get("dy", centre), draws.get("dx", centre),
                              draws.get("flip", torch.zeros(n, dtype=torch.bool, device=self.device)))
        else:
            x = self.split.images[index]
        # Normalize before resizing: the same result (resampling weights sum to 1), on far fewer pixels.
        x = torch.addcmul(self.shift, x.float(), self.scale)
        if "crop_box" in draws:  # RandomResizedCrop after the padded crop and flip, back to the stored side
            x = resized_crops(x, draws["crop_box"], x.shape[-1])
        if "erase" in draws:  # after Normalize, as torchvision's RandomErasing: 0 is the mean pixel
            x = x * ~erasing_mask(draws, x.shape[-2], x.shape[-1])
        if self.extra_channels:  # zeros after normalizing, at the small size
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        # On a GPU (or in bf16/fp16): cast and lay out at 32x32, then resize, so the large batch is written once,
        # in its final form. fp32 on the CPU resizes in NCHW and then copies: 1.8x faster than in NHWC (measured).
        if self.device.type == "cuda" or self.dtype != torch.float32:
            x = x.to(self.dtype).contiguous(memory_format=layout)
        return self.resize(x).contiguous(memory_format=layout)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.input_size and x.shape[-2] == self.input_size:
            return x
        return F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                             antialias=self.input_size < x.shape[-1])

    def batches(self, epoch: int = 0, start: int = 0, generator_state: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start` on; pass the state saved at `start` to continue exactly."""
        self.generator = None
        order = torch.arange(len(self.split), device=self.device)
        if self.train:
            self.generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.split), generator=self.generator, device=self.device)
            if generator_state is not None:
                self.generator.set_state(generator_state)
        for i in range(start, len(self)):
            with record_function("data"):  # a phase of the step in profiles (alexnet.bench --profile)
                index = order[i * self.batch_size:(i + 1) * self.batch_size]
                draws = self.augmentation(len(index), self.generator)
                mine = slice(self.rank, None, self.world_size)  # this rank's share of the global batch
                draws = {k: v[mine] for k, v in draws.items()}
                batch = self.transform(index[mine], draws), self.split.labels[index[mine]]
            yield batch

    def generator_state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
