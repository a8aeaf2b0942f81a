"""The distributed sweep: Ray Tune trials, each running a sweep mode's job on Ray Train workers.

`python -m raytickets.sweep --config FILE` (`cli.py`); `tuner.run(cfg)` from Python. Modules: `modes` (the
registry of what a sweep's trials are), `tickets` (the grid and optuna ticket sweeps), `transfer` (the transfer
experiment's jobs), `trial` (the Tune trainable and the Ray Train worker loop), `tuner` (the Tuner, ASHA and
stages), `cluster` (connecting and checking storage),
`capacity` (whether trials fit: checked before Ray starts, and watched while the sweep runs), `layout` (where a
sweep writes).
"""
