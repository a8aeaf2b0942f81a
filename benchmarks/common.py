"""What the benchmark scripts share (they run as `python benchmarks/NAME.py`, so this sits beside them)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_glue_dir() -> str:
    """GLUE TSVs: $RAYTICKETS_GLUE_DIR, else ../shared/glue beside the checkout (as the tests find them)."""
    return os.environ.get("RAYTICKETS_GLUE_DIR") or str(REPO.parent / "shared" / "glue")
