"""Real-robot stack: device processes (robot, cameras, teleop), shared memory, RealEnv.

Nothing here imports training code; scripts and RealEnv users import this package.
"""
