"""GTSRB (Stallkamp et al. 2012) in its standard layout, resized to 32x32.

Training: ``Final_Training/Images/<class:05d>/GT-<class:05d>.csv`` + ``*.ppm``; test:
``Final_Test/Images/*.ppm`` with ``GT-final_test.csv`` (labels, in ``Final_Test/`` or
``Final_Test/Images/``). CSVs are ``;``-separated with Filename, Width, Height, Roi.X1, Roi.Y1,
Roi.X2, Roi.Y2, ClassId; images are cropped to the ROI before resizing, as is customary.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from .._registry import register
from ..errors import DataNotFoundError, InputError
from ._base import ImageData, resolve_root, to_float_nchw
from ._safe import decode_image, reading

NUM_CLASSES = 43


def _read_csv(path: Path) -> list[dict[str, str]]:
    with reading(path, "the GTSRB CSV"), open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if rows and ("Filename" not in rows[0] or "ClassId" not in rows[0]):
        raise InputError(f"{path}: expected ';'-separated columns Filename ... ClassId")
    return rows


def _load(img_dir: Path, rows: list[dict[str, str]], size: int) -> tuple[list[np.ndarray], list[int]]:
    xs, ys = [], []
    for r in rows:
        p = img_dir / str(r.get("Filename"))
        try:
            roi = tuple(int(r[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
            crop = (roi[0], roi[1], roi[2] + 1, roi[3] + 1)
        except (KeyError, TypeError, ValueError):
            crop = None
        try:
            xs.append(decode_image(p, "RGB", (size, size), crop))
        except FileNotFoundError:
            raise DataNotFoundError(f"GTSRB: {p} is listed in the CSV but missing") from None
        try:
            ys.append(int(r["ClassId"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"GTSRB: {r.get('Filename')!r} has no integer ClassId") from None
    return xs, ys


@register("dataset", "gtsrb")
def load_gtsrb(split: str = "train", root: object = None, size: int = 32, limit: int | None = None) -> ImageData:
    """GTSRB from ``root/gtsrb`` (43 classes, RGB, resized to ``size`` x ``size``)."""
    folder = resolve_root(root, "gtsrb")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    if split == "train":
        base = folder / "Final_Training" / "Images"
        if not base.is_dir():
            raise DataNotFoundError(f"GTSRB train: expected {base}/<class>/GT-<class>.csv and *.ppm "
                                    "(GTSRB_Final_Training_Images.zip extracted into the gtsrb folder)")
        for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
            csvs = sorted(cdir.glob("GT-*.csv"))
            if not csvs:
                raise DataNotFoundError(f"GTSRB train: {cdir} has no GT-*.csv")
            x, y = _load(cdir, _read_csv(csvs[0]), size)
            xs += x
            ys += y
            if limit is not None and len(xs) >= limit:
                break
    elif split == "test":
        img_dir = folder / "Final_Test" / "Images"
        gt = next((p for p in (folder / "GT-final_test.csv", folder / "Final_Test" / "GT-final_test.csv",
                               img_dir / "GT-final_test.csv") if p.is_file()), None)
        if not img_dir.is_dir() or gt is None:
            raise DataNotFoundError(f"GTSRB test: expected {img_dir}/*.ppm and GT-final_test.csv with labels "
                                    "(GTSRB_Final_Test_Images.zip + GTSRB_Final_Test_GT.zip)")
        rows = _read_csv(gt)
        xs, ys = _load(img_dir, rows[:limit] if limit else rows, size)
    else:
        raise InputError(f"unknown split {split!r}; use train or test")
    if not xs:
        raise DataNotFoundError(f"GTSRB {split}: no images found under {folder}")
    if limit is not None:
        xs, ys = xs[:limit], ys[:limit]
    if max(ys) >= NUM_CLASSES or min(ys) < 0:
        raise InputError(f"GTSRB: class ids must be in 0..42, found {min(ys)}..{max(ys)}")
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return ImageData(to_float_nchw(x), torch.tensor(ys), NUM_CLASSES, name="gtsrb")
