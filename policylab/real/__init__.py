"""Real-robot device layer: device processes (robot, cameras, teleop), shared memory, RealEnv.

Nothing here imports training code (tests/real/test_layers.py checks it); the applications that
use both the devices and the RL core live one floor up, in `policylab.robot_apps`.
"""
