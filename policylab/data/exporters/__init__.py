"""Exporters from the zarr ReplayBuffer to other dataset formats (LeRobot v3).

`python -m policylab.data.exporters.lerobot store=... out=...`; the way back is
`policylab.data.importers.lerobot`.
"""
