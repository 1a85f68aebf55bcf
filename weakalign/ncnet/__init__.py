"""Neighbourhood Consensus Networks (Rocco, Cimpoi, Arandjelović, Torii, Pajdla, Sivic,
NeurIPS 2018) as a second method of the suite. See ``docs/ncnet.md``.

====================  ==========================================================================
``conv4d``            4D convolution from ``conv3d`` (:class:`Conv4d`)
``correlation``       4D correlation ``B x 1 x hA x wA x hB x wB``, soft mutual NN filtering
``consensus``         the neighbourhood consensus network (:class:`NeighConsensus`)
``model``             :class:`NCNet` (the reference's ``ImMatchNet``), :class:`NCNetConfig`
``matches``           matches in both directions, keypoint transfer (target -> source pixels)
``loss``              the weak matching loss (positives vs rolled negatives)
``checkpoints``       suite checkpoints and the released reference ``.pth.tar`` files
``params``, ``train`` ``weakalign train-ncnet`` (``train_ncnet:`` block of ``params.yaml``)
``predict``           :func:`predict_pairs_ncnet` (predictions in the evaluation cache format)
====================  ==========================================================================
"""

from .checkpoints import (
    load_ncnet_checkpoint,
    ncnet_from_reference,
    reference_checkpoint,
    save_ncnet_checkpoint,
    to_reference_state_dict,
)
from .consensus import NeighConsensus
from .conv4d import Conv4d, conv4d
from .correlation import correlation_4d, mutual_matching, swap_ab
from .loss import matching_score, weak_loss
from .matches import Matches, corr_to_matches, match_field, transfer_keypoints_ncnet, transfer_points
from .model import NCNet, NCNetConfig, build_ncnet
from .predict import predict_pairs_ncnet

__all__ = [
    "Conv4d", "Matches", "NCNet", "NCNetConfig", "NeighConsensus", "build_ncnet", "conv4d", "corr_to_matches",
    "correlation_4d", "load_ncnet_checkpoint", "match_field", "matching_score", "mutual_matching", "ncnet_from_reference",
    "predict_pairs_ncnet", "reference_checkpoint", "save_ncnet_checkpoint", "swap_ab", "to_reference_state_dict",
    "transfer_keypoints_ncnet", "transfer_points", "weak_loss",
]
