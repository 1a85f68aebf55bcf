"""Datasets, downloads, the offline mirror and the leakage audit.

Modules (import what you need; this package imports nothing heavy on its own):

- :mod:`.paths`     project root, ``data/`` folder, offline mirror resolution
- :mod:`.sources`   manifest of every official file (URL, checksums, expected content)
- :mod:`.download`  resumable, atomic, verified fetching (mirror or network)
- :mod:`.archives`  safe zip/tar extraction (zip-slip / tar-slip rejected)
- :mod:`.images`    :func:`~.images.load_image` (modes, 16-bit, EXIF, corrupt files)
- :mod:`.csvio`     validated readers of the benchmark pair lists
- :mod:`.pfwillow`  PF-WILLOW pair list rebuilt from the ``.mat`` annotations
- :mod:`.datasets`  torch datasets; :mod:`.registry` ``get_dataset(name)``
- :mod:`.audit`     perceptual-hash leakage audit; :mod:`.splits` seeded splits
- :mod:`.commands`  ``weakalign data ...``

See ``docs/datasets.md``.
"""
