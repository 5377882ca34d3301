"""Importers from other dataset formats into the zarr ReplayBuffer (robomimic hdf5, LeRobot v3).

Each module is also a command: `python -m policylab.data.importers.robomimic in=... out=...`,
`python -m policylab.data.importers.lerobot in=... out=...`.
"""
