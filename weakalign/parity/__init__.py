"""Parity with the original code (``weakalign parity``, ``docs/parity.md``).

=============  ===============================================================================
``driver``     script run in a subprocess: imports the original from a checkout, patches it at
               run time to run on PyTorch 2 / CPU, runs one task, saves its outputs
``checkout``   recognises a checkout of ignacio-rocco/weakalign or ncnet, reads its commit
``weights``    seeded random weights written in the original ``.pth.tar`` format
``fixtures``   PF-WILLOW subset folder, PF-PASCAL-format fixture (real CSV, synthetic images)
``harness``    the items: the same inputs through both, compared against tolerances
``report``     ``parity.json`` + ``parity.md``
``commands``   the ``weakalign parity`` sub-command
=============  ===============================================================================

Nothing of the original code is copied here; it is only imported from the user's checkout.
"""
