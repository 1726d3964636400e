"""The soak, reduced for CI: benchmarks/soak.py with 600 mixed calls over a real stdio server.

No errors, RSS drift after warm-up within 5 %, and the process ends within 2 s of stdin closing
and of SIGTERM with five models loaded (figures of the full 10,000-call run: docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reduced_soak_meets_its_targets(models_dir: Path, tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    env = {**os.environ, "OPENARC_MODELS_DIR": str(models_dir)}
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--calls", "600", "--json", str(figures)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert figures.exists(), completed.stderr[-3000:]
    result = json.loads(figures.read_text())
    print(f"\nsoak figures: {json.dumps({k: v for k, v in result.items() if 'latency' not in k})}")  # noqa: T201
    assert result["errors"] == 0, result["first_errors"]
    assert result["targets_missed"] == [], result
    assert completed.returncode == 0
