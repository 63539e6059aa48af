"""The mixed-load bar, shortened: ``scripts/soak_server.py`` for 12 s with 48 clients (the
full run is 60 s with 256): no 5xx, every good request answered right, every bad request
given its 4xx, a client that leaves cancelled, adapters loaded and unloaded, flat memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak_server.py"


@pytest.mark.slow
def test_the_server_survives_a_short_mixed_load(tmp_path):
    report_path = tmp_path / "soak.json"
    command = [sys.executable, str(SCRIPT), "--seconds", "12", "--clients", "48"]
    command += ["--report", str(report_path), "--max-rss-growth-mb", "150"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert report_path.exists(), done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["status_5xx"] == 0 and report["problems"] == 0, report["first_problems"]
    assert report["threads_unfinished"] == 0
    requests = report["requests"]
    assert requests["good"] >= 48 and requests["bad"] >= 20
    assert requests["adapter"] >= 6 and requests["left"] >= 5  # a full load/unload cycle
    assert report["rss_mb"]["growth_after_warmup"] < 150
    assert report["passed"] and done.returncode == 0
