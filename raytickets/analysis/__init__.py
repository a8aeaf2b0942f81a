"""What the rows say: curves, super tickets and matching sparsity (`curves.py`, the rules; `stats.py`, their
tests), mask overlap and layer sparsity (`overlap.py`), the multi-task tables (`multitask.py`), the analysis
tables and summary (`tables.py`: `raytickets analyze`) and the report (`report.py`). Reads results roots;
imports only the core."""
