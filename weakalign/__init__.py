"""weakalign: WeakAlign / CNNGeometric reproduction and benchmarking suite.

Sub-packages:

- :mod:`weakalign.geometry`   coordinate conventions, affine and TPS transforms
- :mod:`weakalign.models`     backbones, correlation, regression heads, CNNGeometric models, checkpoints
- :mod:`weakalign.losses`     strong grid loss and weak soft-inlier count
- :mod:`weakalign.evaluation` PCK and its protocols
- :mod:`weakalign.data`       datasets, downloads, offline mirror, leakage audit

The conventions every module follows are documented in ``docs/conventions.md``.
"""

__version__ = "0.1.0"
