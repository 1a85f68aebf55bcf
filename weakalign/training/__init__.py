"""Training: strong synthetic supervision (CNNGeometric) and weakly-supervised soft-inlier
fine-tuning (WeakAlign), resumable, deterministic and distributed (``torchrun``).

Modules (nothing heavy is imported by this package itself):

- :mod:`.params`    the ``train_strong`` / ``train_weak`` blocks of ``params.yaml`` and profiles
- :mod:`.synthetic` synthetic pair generation (mirror padding, crop, random affine / TPS)
- :mod:`.sources`   image / pair lists from ``data/splits`` and the on-disk feature cache
- :mod:`.engine`    the resumable training loop, checkpoints, seeding, DDP
- :mod:`.strong`    :func:`~.strong.train_strong`
- :mod:`.weak`      :func:`~.weak.train_weak`
- :mod:`.commands`  ``weakalign train STAGE`` (any declared stage), ``train-strong`` / ``train-weak``

See ``docs/training.md``.
"""
