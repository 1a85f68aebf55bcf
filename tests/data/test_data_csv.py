"""Malformed pair lists give clear errors naming the file and the line."""

from __future__ import annotations

import numpy as np
import pytest

from weakalign.data.csvio import (
    PF_WILLOW_HEADER,
    CsvFormatError,
    read_caltech_pairs,
    read_flo,
    read_pair_list,
    read_pf_pascal_pairs,
    read_pf_willow_pairs,
    read_tss_pairs,
)

HDR = "source_image,target_image,class,XA,YA,XB,YB\n"


def _w(tmp_path, text, name="p.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_pf_pascal_good_varying_lengths(tmp_path):
    p = _w(tmp_path, HDR + "a.jpg,b.jpg,1,1;2;3,4;5;6,7;8;9,10;11;12\n"
                           "c.jpg,d.jpg,20,1.5;2.5,3;4,5;6,7;8;\n")
    recs = read_pf_pascal_pairs(p, expected_rows=2)
    assert recs[0].source_points.shape == (2, 3) and recs[1].source_points.shape == (2, 2)
    assert recs[0].category == "aeroplane" and recs[1].category == "tvmonitor"
    np.testing.assert_allclose(recs[0].target_points, [[7, 8, 9], [10, 11, 12]])


@pytest.mark.parametrize("text,match", [
    ("source_image,target_image,class,XA,YA,XB\na,b,1,1,2,3\n", r"p\.csv, line 1: missing column.*YB"),
    (HDR + "a,b,1,1;2,3;4,5;6,7;8\na,b,1,1;nan,3;4,5;6,7;8\n", r"p\.csv, line 3: column 'XA' is NaN"),
    (HDR + "a,b,1,1;2,3;4,5;6,\n", r"line 2: column 'YB' is empty"),
    (HDR + "a,,1,1;2,3;4,5;6,7;8\n", r"line 2: column 'target_image' is empty"),
    (HDR + "a,b,1,1;2;3,3;4,5;6;7,7;8;9\n", r"line 2: keypoint count mismatch.*'YA': 2"),
    (HDR + "a,b,1,1;2,3;4,5;6;7,7;8;9\n", r"line 2: keypoint count mismatch"),
    (HDR + "a,b,1,1;x,3;4,5;6,7;8\n", r"line 2: column 'XA': 'x' is not a number"),
    (HDR + "a,b,21,1,2,3,4\n", r"line 2: column 'class'"),
    (HDR + "a,b,1,1,2,3\n", r"line 2: 6 fields, the header has 7"),
    (HDR + "a,b,1,1,2,3,inf\n", r"line 2: column 'YB' is NaN or infinite"),
])
def test_pf_pascal_malformed(tmp_path, text, match):
    with pytest.raises(CsvFormatError, match=match):
        read_pf_pascal_pairs(_w(tmp_path, text))


def test_wrong_row_count(tmp_path):
    p = _w(tmp_path, HDR + "a,b,1,1,2,3,4\n\n")  # blank lines are ignored
    assert len(read_pf_pascal_pairs(p, expected_rows=1)) == 1
    with pytest.raises(CsvFormatError, match=r"p\.csv: 1 data rows, expected 299"):
        read_pf_pascal_pairs(p, expected_rows=299)


def _willow_row(i):
    return [f"PF-dataset/c(S)/{i}.png", f"PF-dataset/c(S)/{i + 1}.png"] + [str(v) for v in range(40)]


def test_pf_willow_layout(tmp_path):
    rows = [",".join(PF_WILLOW_HEADER)] + [",".join(_willow_row(i)) for i in range(3)]
    p = _w(tmp_path, "\n".join(rows) + "\n")
    recs = read_pf_willow_pairs(p, expected_rows=3)
    assert recs[0].source_points.tolist() == [list(range(0, 10)), list(range(10, 20))]
    assert recs[0].target_points.tolist() == [list(range(20, 30)), list(range(30, 40))]
    assert recs[0].category == "c(S)"
    with pytest.raises(CsvFormatError, match="900"):
        read_pf_willow_pairs(p)  # default manifest: 900 rows
    bad = rows[:2] + [",".join(_willow_row(1)[:-1])]
    with pytest.raises(CsvFormatError, match="line 3: 41 fields"):
        read_pf_willow_pairs(_w(tmp_path, "\n".join(bad) + "\n", "b.csv"), expected_rows=None)
    nan = rows[:1] + [",".join(_willow_row(0)[:5] + ["NaN"] + _willow_row(0)[6:])]
    with pytest.raises(CsvFormatError, match="line 2: column 'XA4' is NaN"):
        read_pf_willow_pairs(_w(tmp_path, "\n".join(nan) + "\n", "n.csv"), expected_rows=None)
    with pytest.raises(CsvFormatError, match="43 columns"):
        read_pf_willow_pairs(_w(tmp_path, ",".join(PF_WILLOW_HEADER + ["x"]) + "\n", "h.csv"))


def test_pair_list_flip(tmp_path):
    p = _w(tmp_path, "source_image,target_image,class,flip\na,b,3,1\nc,d,cat,0\n")
    r = read_pair_list(p, require_flip=True)
    assert (r[0].category, r[0].flip, r[1].category, r[1].flip) == ("bird", 1, "cat", 0)
    with pytest.raises(CsvFormatError, match="line 2: column 'flip'"):
        read_pair_list(_w(tmp_path, "source_image,target_image,class,flip\na,b,3,2\n", "f.csv"))
    with pytest.raises(CsvFormatError, match="missing column.*flip"):
        read_pair_list(_w(tmp_path, "source_image,target_image,class\na,b,3\n", "g.csv"),
                       require_flip=True)
    assert read_pair_list(_w(tmp_path, "source_image,target_image,class\na,b,3\n", "h.csv"))[0].flip == 0


def test_caltech_and_tss(tmp_path):
    c = _w(tmp_path, HDR + "x/a.jpg,x/b.jpg,2,1;2;3,4;5;6,7;8,9;10\n", "c.csv")
    r = read_caltech_pairs(c, expected_rows=1)[0]
    assert r.source_points.shape == (2, 3) and r.target_points.shape == (2, 2)
    with pytest.raises(CsvFormatError, match="polygon X/Y length mismatch"):
        read_caltech_pairs(_w(tmp_path, HDR + "a,b,2,1;2,4,7,9\n", "c2.csv"), expected_rows=None)
    # the reference's own format: quoted, comma-separated cells (np.fromstring(sep=','))
    c3 = _w(tmp_path, HDR + 'x/a.jpg,x/b.jpg,2,"1.5,2,3","4,5,6","7,8","9,10"\n', "c3.csv")
    r = read_caltech_pairs(c3, expected_rows=1)[0]
    np.testing.assert_array_equal(r.source_points, [[1.5, 2, 3], [4, 5, 6]])
    assert r.target_points.shape == (2, 2)
    t = _w(tmp_path, "a,b,c,d,e\nFG3DCar/x/image1.png,FG3DCar/x/image2.png,2,1,1\n", "t.csv")
    r = read_tss_pairs(t)[0]
    assert r.extra["flow_path"] == "FG3DCar/x/flow2.flo" and r.flip == 1
    with pytest.raises(CsvFormatError, match="line 2"):
        read_tss_pairs(_w(tmp_path, "a,b,c,d,e\nx,y,3,0,1\n", "t2.csv"))


def test_read_flo(tmp_path):
    flow = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
    p = tmp_path / "f.flo"
    p.write_bytes(np.float32(202021.25).tobytes() + np.array([4, 3], np.int32).tobytes() + flow.tobytes())
    np.testing.assert_array_equal(read_flo(p), flow)
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_flo(p)
