"""Makes tests/generate/gen_helpers.py importable from the runtime tests."""
from __future__ import annotations

import sys
from pathlib import Path

_GEN = str(Path(__file__).resolve().parents[1] / "generate")
if _GEN not in sys.path:
    sys.path.insert(0, _GEN)
