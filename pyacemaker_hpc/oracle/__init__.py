"""Oracles: the reference calculators that label structures.

``dft`` holds the DFT Calculator (VASP, GPAW, any ASE calculator) behind the ``Oracle``
contract of ``core.interfaces``, plus ``import_labelled`` for DFT data a user already has.
"""
