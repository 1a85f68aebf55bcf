"""Runs pieces of the ORIGINAL code (a user's checkout) and saves what they compute.

This file is executed as a script in a separate process (``python driver.py REF TASK IN OUT``)
by :mod:`weakalign.parity.harness`; it never imports ``weakalign``, and nothing it patches
reaches the project's process. It contains no code of the original: it imports it from the
checkout given on the command line and calls it.

Run-time patches (:func:`patch_runtime`), each needed only because the original was written
for PyTorch 0.3/0.4, torchvision 0.2 and pandas < 1.0:

* ``F.grid_sample`` / ``F.affine_grid`` default to ``align_corners=True``: the behaviour of
  PyTorch < 1.3, which the original relied on (the default changed to ``False`` in 1.3);
* ``torchvision.models.vgg16/resnet101(pretrained=True)`` -> ``weights=None`` (no download;
  every weight is then overwritten from the checkpoint);
* ``torch.load`` defaults to ``weights_only=False`` (PyTorch >= 2.6 refuses the pickled
  ``argparse.Namespace`` of the checkpoints; only files the harness just wrote are loaded);
* ``torch.cuda.is_available`` -> ``False`` (the original picks ``use_cuda`` from it), and
  ``Tensor.cuda`` and ``Module.cuda`` return their object unchanged: several of the original's
  functions default to ``use_cuda=True`` without the caller passing it (e.g.
  ``util/eval_util.py`` ``pck_metric``), i.e. the ``use_cuda=False`` it would need on a CPU;
* ``collections.Mapping/Sequence/Iterable`` (removed in Python 3.10) -> ``collections.abc``;
* ``pandas.Series/DataFrame.as_matrix`` (removed in pandas 1.0) -> ``to_numpy``;
* the output of ``FeatureCorrelation.forward`` (weakalign ``model/cnn_geometric_model.py``) is
  made ``.contiguous()``: it is a transposed view, and PyTorch >= 1.5 convolutions keep such an
  input's (channels-last-like) layout in their output, so the original's ``x.view(b, -1)`` in
  ``FeatureRegression.forward`` fails; old PyTorch always returned contiguous conv outputs.
  Values are unchanged.

``IN`` and ``OUT`` are ``torch.save`` files (dicts of tensors and plain values).
"""

import collections
import collections.abc
import contextlib
import functools
import io
import os
import runpy
import sys
import time
import warnings


def patch_runtime(threads):
    warnings.filterwarnings("ignore")
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    import pandas as pd

    for cls in (pd.Series, pd.DataFrame):
        if not hasattr(cls, "as_matrix"):
            cls.as_matrix = lambda self: self.to_numpy()
    import torch
    import torch.nn.functional as F
    import torchvision.models as tvm

    torch.set_num_threads(int(threads))
    torch.cuda.is_available = lambda: False
    torch.Tensor.cuda = lambda self, *a, **kw: self
    torch.nn.Module.cuda = lambda self, *a, **kw: self
    for fname in ("grid_sample", "affine_grid"):
        orig = getattr(F, fname)

        def wrapped(*a, _orig=orig, **kw):
            kw.setdefault("align_corners", True)
            return _orig(*a, **kw)

        setattr(F, fname, wrapped)
        setattr(torch.nn.functional, fname, wrapped)
    for fname in ("vgg16", "resnet101", "densenet201"):
        orig = getattr(tvm, fname)

        def build(*a, _orig=orig, pretrained=False, **kw):
            kw.pop("weights", None)
            return _orig(weights=None)

        setattr(tvm, fname, build)
    load = torch.load

    @functools.wraps(load)
    def torch_load(*a, **kw):
        kw.setdefault("weights_only", False)
        return load(*a, **kw)

    torch.load = torch_load


def patch_original():
    """Patches that need the original's modules (imported from the checkout on sys.path)."""
    try:
        import model.cnn_geometric_model as cgm
    except ImportError:  # the ncnet checkout has no such module
        return
    forward = cgm.FeatureCorrelation.forward

    def contiguous_forward(self, *a, **kw):
        return forward(self, *a, **kw).contiguous()

    cgm.FeatureCorrelation.forward = contiguous_forward


# -- tasks -----------------------------------------------------------------------------------

def task_geometry(inp):
    """Affine / TPS sampling grids, point transforms and the transformed-grid losses."""
    import torch
    from geotnf.point_tnf import PointTnf
    from geotnf.transformation import AffineGridGen, TpsGridGen
    from model.loss import TransformedGridLoss

    h, w = inp["out_size"]
    ta, tt, pts = inp["theta_aff"], inp["theta_tps"], inp["points"]
    out = {}
    out["affine_grid"] = AffineGridGen(out_h=h, out_w=w, use_cuda=False)(ta.view(-1, 2, 3))
    out["tps_grid"] = TpsGridGen(out_h=h, out_w=w, use_cuda=False)(tt)
    pt = PointTnf(use_cuda=False)
    out["affine_points"] = pt.affPointTnf(ta, pts)
    out["tps_points"] = pt.tpsPointTnf(tt, pts)
    out["affine_tps_points"] = pt.affPointTnf(ta, pt.tpsPointTnf(tt, pts))
    for kind, th, gt in (("affine", ta, inp["theta_aff_gt"]), ("tps", tt, inp["theta_tps_gt"])):
        out[f"grid_loss_{kind}"] = TransformedGridLoss(geometric_model=kind, use_cuda=False)(th, gt)
    return {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}


def task_inlier(inp):
    """Soft-inlier counts: affine and two-stage, dilation filter 0/1/2 (train_weak.py's way)."""
    from scipy.ndimage import generate_binary_structure
    from model.loss import TwoStageWeakInlierCount, WeakInlierCount

    corr, ta, tt = inp["corr"], inp["theta_aff"], inp["theta_tps"]
    out = {}
    for d in (0, 1, 2):
        filt = 0 if d == 0 else generate_binary_structure(2, d)
        kw = dict(tps_reg_factor=inp["tps_reg_factor"], normalize_inlier_count=True, dilation_filter=filt, use_cuda=False)
        out[f"affine_{d}"] = WeakInlierCount(geometric_model="affine", **kw)(ta, corr).detach()
        out[f"two_stage_{d}"] = TwoStageWeakInlierCount(**kw)(theta_aff=ta, theta_aff_tps=tt, matches=corr).detach()
    return out


def task_eval_pf(inp):
    """The original ``eval.py`` as it ships, on a PF-WILLOW-format folder, with a two-stage
    checkpoint: per-pair PCK (its own ``compute_metric``), theta of both stages (recorded from
    the model's forward), and the seconds spent in ``compute_metric``."""
    import torch
    import util.eval_util as eu
    from model.cnn_geometric_model import TwoStageCNNGeometric

    record, timing = {"aff": [], "aff_tps": []}, {}
    forward = TwoStageCNNGeometric.forward

    def recording_forward(self, *a, **kw):
        res = forward(self, *a, **kw)
        record["aff"].append(res[0].detach().clone())
        record["aff_tps"].append(res[1].detach().clone())
        return res

    if inp.get("record_theta", True):
        TwoStageCNNGeometric.forward = recording_forward
    compute = eu.compute_metric

    def timed(*a, **kw):
        t0 = time.perf_counter()
        stats = compute(*a, **kw)
        timing["seconds"] = time.perf_counter() - t0
        timing["stats"] = stats
        return stats

    eu.compute_metric = timed
    argv = ["eval.py", "--model", inp["checkpoint"], "--feature-extraction-cnn", inp["cnn"],
            "--eval-dataset", "pf", "--eval-dataset-path", inp["dataset_path"], "--pck-alpha", str(inp.get("alpha", 0.1))]
    sys.argv = argv
    with contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(os.path.join(inp["ref"], "eval.py"), run_name="__main__")
    stats = timing["stats"]
    out = {"seconds": timing["seconds"], "argv": argv,
           "pck_aff": torch.as_tensor(stats["aff"]["pck"]).view(-1),
           "pck_aff_tps": torch.as_tensor(stats["aff_tps"]["pck"]).view(-1)}
    if record["aff"]:
        out["theta_aff"] = torch.cat(record["aff"]).view(-1, 6)
        out["theta_aff_tps"] = torch.cat(record["aff_tps"]).view(-1, 18)
    return out


def task_pf_pascal(inp):
    """Per-pair PCK (and mean distance / L) of given per-pair affine thetas through the original
    ``PFPascalDataset(pck_procedure='scnet')`` + ``pck_metric`` / ``point_dist_metric``."""
    import argparse

    import numpy as np
    import torch
    from data.pf_dataset import PFPascalDataset
    from torch.utils.data.dataloader import default_collate
    from util.eval_util import pck_metric, point_dist_metric

    ds = PFPascalDataset(csv_file=inp["csv"], dataset_path=inp["dataset_path"], output_size=(240, 240), pck_procedure="scnet")
    theta = inp["theta_aff"]
    n = len(ds)
    alphas = inp["alphas"]
    pck = {a: np.zeros((n, 1)) for a in alphas}
    dist = np.zeros((n, 1))
    for i in range(n):
        batch = default_collate([ds[i]])
        th = theta[i : i + 1]
        for a in alphas:
            stats = {"aff": {"pck": pck[a]}}
            pck_metric(batch, i, th, None, None, stats, argparse.Namespace(pck_alpha=a, tps_reg_factor=0.0), use_cuda=False)
        point_dist_metric(batch, i, th, None, None, {"aff": {"dist": dist}}, argparse.Namespace(tps_reg_factor=0.0), use_cuda=False)
    return {"pck": {a: torch.as_tensor(v).view(-1) for a, v in pck.items()}, "dist": torch.as_tensor(dist).view(-1)}


def task_ncnet(inp):
    """NCNet (ignacio-rocco/ncnet): ``ImMatchNet(checkpoint=...)`` on given images (0-255,
    normalised by its ``NormalizeImageDict``): the filtered correlation, and the target points
    transferred with ``corr_to_matches(do_softmax=True)`` + ``bilinearInterpPointTnf``; plus
    per-pair PCK of given correlations on a PF-PASCAL-format CSV (``eval_pf_pascal.py``'s way)."""
    import argparse

    import numpy as np
    import torch
    from lib.normalization import NormalizeImageDict
    from lib.point_tnf import bilinearInterpPointTnf, corr_to_matches

    out = {}
    if "checkpoint" in inp:
        from lib.model import ImMatchNet

        with contextlib.redirect_stdout(io.StringIO()):
            model = ImMatchNet(use_cuda=False, checkpoint=inp["checkpoint"])
        model.eval()
        norm = NormalizeImageDict(["source_image", "target_image"])
        corrs, warped = [], []
        with torch.no_grad():
            for i in range(inp["source"].shape[0]):
                batch = norm({"source_image": inp["source"][i].clone(), "target_image": inp["target"][i].clone()})
                batch = {k: v.unsqueeze(0) for k, v in batch.items()}
                corr = model(batch)
                xA, yA, xB, yB, _ = corr_to_matches(corr, do_softmax=True)
                warped.append(bilinearInterpPointTnf((xA, yA, xB, yB), inp["points"][i : i + 1]))
                corrs.append(corr)
        out["corr"], out["warped_points"] = torch.cat(corrs), torch.cat(warped)
    if "pascal_corr" in inp:
        from lib.eval_util import pck_metric
        from lib.pf_dataset import PFPascalDataset
        from torch.utils.data.dataloader import default_collate

        ds = PFPascalDataset(csv_file=inp["csv"], dataset_path=inp["dataset_path"], output_size=(64, 64), pck_procedure="scnet")
        corr = inp["pascal_corr"]
        stats = {"point_tnf": {"pck": np.zeros((len(ds), 1))}}
        for i in range(len(ds)):
            xA, yA, xB, yB, _ = corr_to_matches(corr[i : i + 1], do_softmax=True)
            pck_metric(default_collate([ds[i]]), i, (xA, yA, xB, yB), stats, argparse.Namespace(), use_cuda=False)
        out["pascal_pck"] = torch.as_tensor(stats["point_tnf"]["pck"]).view(-1)
    return out


TASKS = {"geometry": task_geometry, "inlier": task_inlier, "eval_pf": task_eval_pf,
         "pf_pascal": task_pf_pascal, "ncnet": task_ncnet}


def main(argv):
    ref, task, inp_path, out_path = argv
    import torch

    inp = torch.load(inp_path, weights_only=False)
    patch_runtime(inp.get("threads", 2))
    sys.path.insert(0, os.path.abspath(ref))
    os.chdir(os.path.abspath(ref))
    inp["ref"] = os.path.abspath(ref)
    patch_original()
    with torch.no_grad() if task != "eval_pf" else contextlib.nullcontext():
        out = TASKS[task](inp)
    torch.save(out, out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
