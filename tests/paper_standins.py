"""Stand-ins, in the OFFICIAL layouts, for the datasets and weights the paper profile needs and
this machine does not have (used by ``tests/test_paper_profile.py``).

Every builder writes into a ``data/`` folder (or the torch hub folder) exactly where the real
files land after ``weakalign data fetch ...`` / the documented manual steps, with the real file
formats; only the pixels (smooth random colours), the annotations (random) and the weights
(random) are fake. Sizes are tiny so the whole paper pipeline runs in minutes on a CPU.

* Pascal VOC 2011: ``pascal-voc-2011/TrainVal/VOCdevkit/VOC2011/JPEGImages/*.jpg`` (the
  layout of ``VOCtrainval_25-May-2011.tar``) and the original code's image lists
  ``training_data/pascal-random/{train,test}.csv`` (header ``image``, rows
  ``TrainVal/VOCdevkit/VOC2011/JPEGImages/<name>.jpg``), kept as
  ``pascal-voc-2011/pascal_random_{train,test}.csv``. Some JPEGs are in neither list (the real
  folder holds ~15,000 JPEGs, the lists 13,500 + 560).
* PF-PASCAL images: one JPEG at every ``PF-dataset-PASCAL/JPEGImages/...`` path the pair lists
  name (the lists themselves are the real ones, fetched from the mirror), large enough to hold
  the keypoints of the test/validation lists.
* Caltech-101: ``caltech-101/101_ObjectCategories/<category>/image_NNNN.jpg``,
  ``caltech-101/Annotations/<category>/annotation_NNNN.mat`` (``box_coord``, ``obj_contour``)
  and ``caltech-101/test_pairs_caltech_with_category.csv`` (1,515 rows, the official count;
  columns ``source_image,target_image,class,XA,YA,XB,YB``, polygons as comma-separated lists,
  image paths ``101_ObjectCategories/<category>/<file>``).
* TSS: ``tss/TSS_CVPR2016/{FG3DCar,JODS,PASCAL}/<pair>/{image1,image2}.png``,
  ``flow{1,2}.flo`` (Middlebury), ``mask{1,2}.png`` and ``tss/test_pairs_tss.csv``
  (``source_image,target_image,flow_direction,flip_img_A,pair_category``).
* ResNet-101: ``<torch hub dir>/checkpoints/resnet101-63fe2227.pth``, the state dict of
  ``torchvision.models.resnet101()`` with random values (docs/backbones.md).
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
from PIL import Image

VOC_JPEG_DIR = "TrainVal/VOCdevkit/VOC2011/JPEGImages"
#: Caltech-101 folders of the stand-in (BACKGROUND_Google and Faces_easy are excluded from
#: training by data.exclude_categories, as in the real folder).
CALTECH_CATEGORIES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", "airplanes")
TSS_SUBSETS = ("FG3DCar", "JODS", "PASCAL")


def smooth_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Smooth random colours (compress well, give the phash audit distinct images)."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def write_jpeg(path: Path, rng, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth_image(rng, h, w).save(path, quality=85)


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_voc(data: Path, n_train: int = 6, n_test: int = 4, n_unlisted: int = 3, seed: int = 0) -> dict:
    """VOC 2011 JPEGs + the original code's train/test image lists; returns the lists' rows."""
    rng = np.random.default_rng(seed)
    base = data / "pascal-voc-2011"
    names = [f"2011_{i:06d}.jpg" for i in range(n_train + n_test + n_unlisted)]
    for name in names:
        write_jpeg(base / VOC_JPEG_DIR / name, rng, int(rng.integers(300, 376)), 500)
    rows = [f"{VOC_JPEG_DIR}/{n}" for n in names]
    train, test = rows[:n_train], rows[n_train:n_train + n_test]
    _write_csv(base / "pascal_random_train.csv", ["image"], ([r] for r in train))
    _write_csv(base / "pascal_random_test.csv", ["image"], ([r] for r in test))
    return {"train": train, "test": test, "unlisted": rows[n_train + n_test:]}


def make_pf_pascal_images(data: Path, seed: int = 1) -> int:
    """A JPEG at every image path named by the PF-PASCAL pair lists in ``data/pf-pascal``
    (which must be there: ``weakalign data fetch pf-pascal``); returns the number written."""
    rng = np.random.default_rng(seed)
    d = data / "pf-pascal"
    extent: dict[str, list[float]] = {}
    for name in ("test", "val", "train"):
        with open(d / f"{name}_pairs_pf_pascal.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            for img, xs, ys in ((r["source_image"], r.get("XA"), r.get("YA")),
                                (r["target_image"], r.get("XB"), r.get("YB"))):
                e = extent.setdefault(img, [150.0, 120.0])
                if xs:
                    e[0] = max(e[0], *map(float, xs.split(";")))
                    e[1] = max(e[1], *map(float, ys.split(";")))
    for img, (mx, my) in extent.items():
        write_jpeg(d / img, rng, min(500, int(my) + 8), min(500, int(mx) + 8))
    return len(extent)


def make_caltech(data: Path, per_category: int = 6, eval_images: int = 2, rows: int = 1515, seed: int = 2) -> list[str]:
    """Caltech-101 photos, annotations and the 1,515-row label-transfer pair list; the pairs
    use the first ``eval_images`` photos of each category (the rest stays a training pool)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    base = data / "caltech-101"
    eval_imgs: dict[str, list[tuple[str, int, int]]] = {}
    for cat in CALTECH_CATEGORIES:
        for i in range(1, per_category + 1):
            h, w = int(rng.integers(180, 300)), int(rng.integers(200, 300))
            write_jpeg(base / "101_ObjectCategories" / cat / f"image_{i:04d}.jpg", rng, h, w)
            x0, y0 = float(rng.uniform(5, w / 3)), float(rng.uniform(5, h / 3))
            x1, y1 = float(rng.uniform(2 * w / 3, w - 5)), float(rng.uniform(2 * h / 3, h - 5))
            # official annotation files: box_coord [y0 y1 x0 x1], obj_contour 2 x K relative to the box
            contour = np.array([[0, x1 - x0, x1 - x0, 0], [0, 0, y1 - y0, y1 - y0]], dtype=np.float64)
            (base / "Annotations" / cat).mkdir(parents=True, exist_ok=True)
            savemat(base / "Annotations" / cat / f"annotation_{i:04d}.mat",
                    {"box_coord": np.array([[y0, y1, x0, x1]]), "obj_contour": contour})
            if i <= eval_images and cat != "BACKGROUND_Google":
                eval_imgs.setdefault(cat, []).append((f"101_ObjectCategories/{cat}/image_{i:04d}.jpg", h, w))
    cats = sorted(eval_imgs)
    out = []
    for k in range(rows):
        cat = cats[k % len(cats)]
        (a, ha, wa), (b, hb, wb) = eval_imgs[cat][0], eval_imgs[cat][1 % len(eval_imgs[cat])]

        def poly(h, w):
            n = int(rng.integers(4, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            xs = w / 2 + 0.35 * w * np.cos(ang)
            ys = h / 2 + 0.35 * h * np.sin(ang)
            return ",".join(f"{v:.2f}" for v in xs), ",".join(f"{v:.2f}" for v in ys)

        xa, ya = poly(ha, wa)
        xb, yb = poly(hb, wb)
        out.append([a, b, cats.index(cat) + 1, xa, ya, xb, yb])
    _write_csv(base / "test_pairs_caltech_with_category.csv",
               ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"], out)
    return [r[0] for r in out[:len(cats)]]


def write_flo(path: Path, flow: np.ndarray) -> None:
    """Middlebury ``.flo``: 'PIEH' magic (202021.25), int32 width, height, float32 (u, v) rows."""
    h, w, _ = flow.shape
    with open(path, "wb") as fh:
        fh.write(struct.pack("<fii", 202021.25, w, h))
        fh.write(flow.astype("<f4").tobytes())


def make_tss(data: Path, pairs_per_subset: int = 2, seed: int = 3) -> int:
    """TSS folders (images, flows, masks) and ``test_pairs_tss.csv`` (both flow directions of
    every pair, as the official list); returns the number of rows."""
    rng = np.random.default_rng(seed)
    base = data / "tss"
    rows = []
    for ci, sub in enumerate(TSS_SUBSETS, start=1):
        for k in range(pairs_per_subset):
            folder = base / "TSS_CVPR2016" / sub / f"{sub.lower()}_{k:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(120, 200)), int(rng.integers(150, 250))
            for i in (1, 2):
                smooth_image(rng, h, w).save(folder / f"image{i}.png")
                write_flo(folder / f"flow{i}.flo", rng.uniform(-5, 5, (h, w, 2)).astype(np.float32))
                mask = np.zeros((h, w), np.uint8)
                mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
                Image.fromarray(mask).save(folder / f"mask{i}.png")
            rel = f"TSS_CVPR2016/{sub}/{folder.name}"
            rows.append([f"{rel}/image1.png", f"{rel}/image2.png", 1, 0, ci])
            rows.append([f"{rel}/image2.png", f"{rel}/image1.png", 2, int(k % 2), ci])
    _write_csv(base / "test_pairs_tss.csv",
               ["source_image", "target_image", "flow_direction", "flip_img_A", "pair_category"], rows)
    return len(rows)


def make_resnet101_weights(hub_dir: Path) -> Path:
    """torchvision ResNet-101 state dict, random values, at ``<hub dir>/checkpoints/`` under the
    official file name (docs/backbones.md)."""
    import torch
    from torchvision.models import resnet101

    torch.manual_seed(0)
    path = hub_dir / "checkpoints" / "resnet101-63fe2227.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(resnet101(weights=None).state_dict(), path)
    return path
