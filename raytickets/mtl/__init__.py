"""Multi-task learning with shared super tickets (Liang et al. 2021 §5): `raytickets mtl` (`cli.py`) and the
`mtl` sweep mode (`sweep.py`). `experiment.py` holds the config, arms and plan; `run.py` runs a plan; `tickets.py`
chooses each task's ticket; `data.py`, `model.py`, `train.py` and `remote.py` train one shared encoder through
the tasks' tickets, in this process or on Ray Train workers. A feature: it imports the core, analysis and the
sweep, never export or the CLI."""
