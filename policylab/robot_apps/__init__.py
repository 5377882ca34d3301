"""Robot applications: the floor above the device layer (`policylab.real`) and the RL core (`policylab.rl`).

The RL env on a robot (`rl_env`), the real-robot evaluation loops (`evaluation`, `rl_eval`),
success-frame recording (`success_recording`), the teleop-demo converter to the RL layout
(`rl_demos`) and the runners the entry scripts choose by config (`runners`). They import
`policylab.real` and `policylab.rl`; `policylab.real` imports nothing from here or from training.
"""
