"""Manifest of every file the data pipeline can fetch: official URL, checksums, expected content.

Checksums
    ``sha256`` / ``size`` are the OFFICIAL file's checksum and size. None of them is known here
    (the official servers cannot be reached from these machines and the authors publish no
    checksums), so they are ``None``; fill them in once a download from the official URL has been
    verified by content (``weakalign data fetch`` prints the observed sha256 and writes it beside
    the file as ``<name>.sha256``).

    ``mirror_sha256`` / ``mirror_size`` are the checksums of the copies in the offline mirror of
    these machines (``../shared/datasets``; its ``SHA256SUMS``). Those copies were rebuilt from
    public copies and may differ byte-for-byte from the official archives while holding the same
    files, so they are recorded as *mirror* checksums, never as official ones.

Verification (see :func:`weakalign.data.download.verify_file`): a file with a known checksum
(``sha256`` or ``mirror_sha256``) must match one of them, from the mirror or the network; a
mismatch is an error and the file is never kept. A file with neither is refused unless the user
passes ``--trust-unverified`` (it is then checked on its content manifest alone and labelled
UNVERIFIED in its ``.sha256`` note). The content manifest (``expected``: counts of files in an
archive, rows in a CSV) must hold in every case. URLs use https where the host is known to
serve it (www.di.ens.fr, www.vision.caltech.edu, raw.githubusercontent.com); the two hosts
left on http are covered by the checksum rule above.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceFile:
    """One file served by an official source."""

    key: str  # unique id, also the CLI name for single files
    dataset: str  # folder under data/ that receives it
    filename: str  # local file name (the name the official URL serves, unless noted)
    url: str
    kind: str  # "zip" | "tar" | "csv"
    mirror_names: tuple[str, ...] = ()  # paths tried, in order, inside the mirror folder
    sha256: str | None = None  # official checksum (unknown = None)
    size: int | None = None  # official size in bytes (unknown = None)
    mirror_sha256: str | None = None  # checksum of the copy in ../shared/datasets
    mirror_size: int | None = None
    # For archives: the top-level folder(s) the archive holds, moved into data/<dataset>/.
    extract_dirs: tuple[str, ...] = ()
    # Content manifest. Archives: {"ext:png": 100, "dirs": 10, ...} counted among members under
    # extract_dirs (ignoring __MACOSX and .DS_Store). CSVs: {"rows": N, "columns": [...]}
    expected: dict = field(default_factory=dict)
    licence: str = ""
    note: str = ""
    approx_size: str = ""  # human-readable size, for docs and `weakalign data status`

    @property
    def download_subdir(self) -> str:
        """Archives are kept under data/downloads/; CSVs go straight to data/<dataset>/."""
        return "downloads" if self.kind in ("zip", "tar") else self.dataset


_ENS_CNNGEO = "https://www.di.ens.fr/willow/research/cnngeometric/other_resources"
_ENS_PF = "https://www.di.ens.fr/willow/research/proposalflow/dataset"
_PF_LICENCE = "academic use; cite Ham et al., Proposal Flow (CVPR 2016 / TPAMI 2018)"
_PF_PASCAL_KP_COLUMNS = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]

SOURCES: dict[str, SourceFile] = {}


def _add(f: SourceFile) -> None:
    assert f.key not in SOURCES, f.key
    SOURCES[f.key] = f


# --- PF-WILLOW --------------------------------------------------------------------------------
_add(
    SourceFile(
        key="PF-dataset.zip",
        dataset="pf-willow",
        filename="PF-dataset.zip",
        url=f"{_ENS_PF}/PF-dataset.zip",
        kind="zip",
        mirror_names=("PF-dataset.zip",),
        mirror_sha256="3a3b747b1d454ce0b26f5c12c2ac54c88a21502a70a133e5b6ff2ab029cddc07",
        mirror_size=10_393_984,
        extract_dirs=("PF-dataset",),
        expected={"ext:png": 100, "ext:mat": 100, "dirs": 10},
        licence=_PF_LICENCE + "; images from WILLOW-ObjectClass (Cho et al.) and Caltech-256",
        approx_size="10 MB",
    )
)
_add(
    SourceFile(
        key="test_pairs_pf.csv",
        dataset="pf-willow",
        filename="test_pairs_pf.csv",
        url=f"{_ENS_CNNGEO}/test_pairs_pf.csv",
        kind="csv",
        mirror_names=("test_pairs_pf.csv", "pf-willow/test_pairs_pf.csv"),
        expected={"rows": 900, "num_columns": 42},
        licence="CNNGeometric resources (Rocco et al.); keypoints from PF-WILLOW",
        note="not in the offline mirror: rebuilt from the .mat annotations by "
        "`weakalign data prepare-pf-willow`",
        approx_size="0.7 MB (rebuilt file)",
    )
)

# --- PF-PASCAL --------------------------------------------------------------------------------
_add(
    SourceFile(
        key="PF-dataset-PASCAL.zip",
        dataset="pf-pascal",
        filename="PF-dataset-PASCAL.zip",
        url=f"{_ENS_PF}/PF-dataset-PASCAL.zip",
        kind="zip",
        mirror_names=("PF-dataset-PASCAL.zip", "pf-pascal/PF-dataset-PASCAL.zip"),
        extract_dirs=("PF-dataset-PASCAL",),
        # The exact image count of the official archive is not recorded here: the three pair
        # lists name 1,343 distinct images, so at least that many JPEGs must be present, and
        # `PFPascalDataset.missing_files()` checks that every named image exists.
        expected={"min:ext:jpg": 1343},
        licence=_PF_LICENCE + "; images from PASCAL VOC (Flickr terms)",
        note="not in the offline mirror (paper-scale profile only)",
        approx_size="not recorded here (not reachable offline)",
    )
)
_add(
    SourceFile(
        key="test_pairs_pf_pascal.csv",
        dataset="pf-pascal",
        filename="test_pairs_pf_pascal.csv",
        url=f"{_ENS_CNNGEO}/test_pairs_pf_pascal.csv",
        kind="csv",
        mirror_names=("pf-pascal/test_pairs_pf_pascal.csv", "test_pairs_pf_pascal.csv"),
        mirror_sha256="1891bfd52cac67898aa5b65a50818e315e5228b956fdda1baad400e6a89c6fe6",
        mirror_size=164_029,
        expected={"rows": 299, "columns": _PF_PASCAL_KP_COLUMNS},
        licence=_PF_LICENCE,
        approx_size="0.2 MB",
    )
)
_add(
    SourceFile(
        key="val_pairs_pf_pascal.csv",
        dataset="pf-pascal",
        filename="val_pairs_pf_pascal.csv",
        url=f"{_ENS_CNNGEO}/val_pairs_pf_pascal.csv",
        kind="csv",
        mirror_names=("pf-pascal/val_pairs_pf_pascal.csv", "val_pairs_pf_pascal.csv"),
        mirror_sha256="8e980034c4b953267fb2b3818ad1b6f5e60014e08bc52052cb3ad6d2d1a5b09a",
        mirror_size=173_432,
        expected={"rows": 308, "columns": _PF_PASCAL_KP_COLUMNS},
        licence=_PF_LICENCE,
        approx_size="0.2 MB",
    )
)
_add(
    SourceFile(
        key="train_pairs_pf_pascal.csv",
        dataset="pf-pascal",
        filename="train_pairs_pf_pascal.csv",
        # Served under the name train_pairs.csv; kept locally under the mirror's name.
        url="https://raw.githubusercontent.com/ignacio-rocco/weakalign/master/"
        "training_data/pf-pascal-flip/train_pairs.csv",
        kind="csv",
        mirror_names=("pf-pascal/train_pairs_pf_pascal.csv", "train_pairs_pf_pascal.csv"),
        mirror_sha256="5448846c11c12100fda3d30fdbc31bca9cfc2ec9687a825fa6e754ea79cdb4fa",
        mirror_size=277_757,
        expected={"rows": 2940, "columns": ["source_image", "target_image", "class", "flip"]},
        licence="weakalign repository (MIT); pairs of PF-PASCAL images",
        note="the weak-training pair list of the paper (with its horizontal-flip column)",
        approx_size="0.3 MB",
    )
)

# --- Caltech-101 ------------------------------------------------------------------------------
_CALTECH = "https://www.vision.caltech.edu/Image_Datasets/Caltech101"
_add(
    SourceFile(
        key="101_ObjectCategories.tar.gz",
        dataset="caltech-101",
        filename="101_ObjectCategories.tar.gz",
        url=f"{_CALTECH}/101_ObjectCategories.tar.gz",
        kind="tar",
        mirror_names=("101_ObjectCategories.tar.gz",),
        mirror_sha256="68c9f562e447df9f55337a016bb9526097261b85ecc9dffee4c9e7c608d2a67d",
        mirror_size=131_713_059,
        extract_dirs=("101_ObjectCategories",),
        expected={"ext:jpg": 9144, "dirs": 102},
        licence="cite Fei-Fei, Fergus, Perona (CVPRW 2004); research use",
        note="the official URL has moved; the archive is now distributed by CaltechDATA inside "
        "caltech-101.zip (https://data.caltech.edu/records/mzrjq-6wc02)",
        approx_size="131 MB (139 MB extracted)",
    )
)
_add(
    SourceFile(
        key="Annotations.tar",
        dataset="caltech-101",
        filename="Annotations.tar",
        url=f"{_CALTECH}/Annotations.tar",
        kind="tar",
        mirror_names=("Annotations.tar", "caltech-101/Annotations.tar"),
        extract_dirs=("Annotations",),
        expected={"min:ext:mat": 8000},  # unverified lower bound
        licence="cite Fei-Fei, Fergus, Perona (CVPRW 2004)",
        note="not in the offline mirror; folder names differ from the image folders "
        "(Airplanes_Side_2, Faces_2, Faces_3, Motorbikes_16), see CaltechDataset",
        approx_size="not recorded here",
    )
)
_add(
    SourceFile(
        key="test_pairs_caltech_with_category.csv",
        dataset="caltech-101",
        filename="test_pairs_caltech_with_category.csv",
        url="https://www.di.ens.fr/willow/research/weakalign/other_resources/"
        "test_pairs_caltech_with_category.csv",
        kind="csv",
        mirror_names=(
            "test_pairs_caltech_with_category.csv",
            "caltech-101/test_pairs_caltech_with_category.csv",
        ),
        expected={"rows": 1515, "columns": _PF_PASCAL_KP_COLUMNS},
        licence="weakalign resources (Rocco et al.)",
        note="not in the offline mirror",
        approx_size="not recorded here",
    )
)

# --- TSS --------------------------------------------------------------------------------------
_add(
    SourceFile(
        key="TSS_CVPR2016.zip",
        dataset="tss",
        filename="TSS_CVPR2016.zip",
        url="http://www.hci.iis.u-tokyo.ac.jp/datasets/data/JointCorrCoseg/TSS_CVPR2016.zip",
        kind="zip",
        mirror_names=("TSS_CVPR2016.zip", "tss/TSS_CVPR2016.zip"),
        extract_dirs=("TSS_CVPR2016",),
        expected={"min:ext:png": 400},  # unverified lower bound (400 pairs)
        licence="cite Taniai, Sinha, Sato (CVPR 2016); research use",
        note="not in the offline mirror",
        approx_size="not recorded here",
    )
)
_add(
    SourceFile(
        key="test_pairs_tss.csv",
        dataset="tss",
        filename="test_pairs_tss.csv",
        url=f"{_ENS_CNNGEO}/test_pairs_tss.csv",
        kind="csv",
        mirror_names=("test_pairs_tss.csv", "tss/test_pairs_tss.csv"),
        expected={"num_columns": 5},
        licence="CNNGeometric resources (Rocco et al.)",
        note="not in the offline mirror; row count not recorded here",
        approx_size="not recorded here",
    )
)

# --- Pascal VOC 2011 (paper-scale strong training) --------------------------------------------
_add(
    SourceFile(
        key="VOCtrainval_25-May-2011.tar",
        dataset="pascal-voc-2011",
        filename="VOCtrainval_25-May-2011.tar",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
        kind="tar",
        mirror_names=("VOCtrainval_25-May-2011.tar",),
        extract_dirs=("TrainVal",),
        expected={"min:ext:jpg": 11000},  # unverified lower bound
        licence="PASCAL VOC: images from Flickr under their own terms; annotations for research",
        note="not in the offline mirror; paper-scale profile only (strong synthetic training)",
        approx_size="about 1.7 GB (not verified here)",
    )
)

# The original code's VOC 2011 image lists (training_data/pascal-random/): train.csv is the list
# its strong models were trained on (scripts/train_strong_random_*_pascal.sh), test.csv the one
# they were selected on (train_strong.py: best test loss). Paper profile only. Checksums: the
# git blobs of ignacio-rocco/weakalign at commit 52505ea (the official files).
_WEAKALIGN_RAW = "https://raw.githubusercontent.com/ignacio-rocco/weakalign/52505eaeed52dc82cf755919b119ef99fe8b1ed1"
for _split, _rows, _sha, _size in (
        ("train", 13500, "5807374f87a0f7696d27d33b77acc7b111df25c5dd3ba47a8c17e6224083bf85", 729_006),
        ("test", 560, "3be3c2281860442b2f1928496dcef499b4ba3c5b53e2b8b2774d8635059403f0", 30_246)):
    _add(
        SourceFile(
            key=f"pascal_random_{_split}.csv",
            dataset="pascal-voc-2011",
            filename=f"pascal_random_{_split}.csv",
            # served as training_data/pascal-random/{train,test}.csv; kept under this name
            url=f"{_WEAKALIGN_RAW}/training_data/pascal-random/{_split}.csv",
            kind="csv",
            mirror_names=(f"pascal-voc-2011/pascal_random_{_split}.csv", f"pascal_random_{_split}.csv"),
            sha256=_sha,
            size=_size,
            expected={"rows": _rows, "columns": ["image"]},
            licence="weakalign repository (MIT); names of Pascal VOC 2011 images",
            note=f"the original's strong-training {'image list' if _split == 'train' else 'selection list'} "
                 "(rows TrainVal/VOCdevkit/VOC2011/JPEGImages/<name>.jpg, relative to data/pascal-voc-2011)",
            approx_size="0.7 MB" if _split == "train" else "30 kB",
        )
    )


# Named groups of files, as used by `weakalign data fetch NAME`.
GROUPS: dict[str, tuple[str, ...]] = {
    "pf-willow": ("PF-dataset.zip",),
    "pf-willow-pairs": ("test_pairs_pf.csv",),
    "pf-pascal": ("test_pairs_pf_pascal.csv", "val_pairs_pf_pascal.csv", "train_pairs_pf_pascal.csv"),
    "pf-pascal-images": ("PF-dataset-PASCAL.zip",),
    "caltech-101": ("101_ObjectCategories.tar.gz",),
    "caltech-101-annotations": ("Annotations.tar", "test_pairs_caltech_with_category.csv"),
    "tss": ("TSS_CVPR2016.zip", "test_pairs_tss.csv"),
    "pascal-voc-2011": ("VOCtrainval_25-May-2011.tar", "pascal_random_train.csv", "pascal_random_test.csv"),
}


def resolve(names) -> list[SourceFile]:
    """Group names or file keys -> SourceFiles (order kept, duplicates dropped)."""
    out: list[SourceFile] = []
    for name in names:
        keys = GROUPS.get(name) or ((name,) if name in SOURCES else None)
        if keys is None:
            from weakalign.cli import UserError

            raise UserError(
                f"unknown data source {name!r}; choose from: "
                + ", ".join(list(GROUPS) + list(SOURCES))
            )
        for k in keys:
            if SOURCES[k] not in out:
                out.append(SOURCES[k])
    return out
