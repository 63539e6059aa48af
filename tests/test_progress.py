"""Signs of life without a terminal: where stderr is a file, our long loops write one plain
line at a modest rate (stage, done/total, figures, elapsed, ETA) instead of a tqdm bar."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from apprentice.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]


def test_lines_come_at_the_interval_with_figures_and_an_eta(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("apprentice.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = LineProgress(200, "Train multitask", unit="steps", interval_s=30, stream=out)
    bar.update(10)  # the first update shows at once
    for _ in range(9):  # 9 s of updates: within the interval, nothing more
        clock[0] += 1
        bar.update(1)
    clock[0] += 21  # 30 s since the first line: 20 steps in 30 s, 180 to go
    bar.set_postfix(loss="0.4210", tok_s="3700")
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "[apprentice] Train multitask: 10/200 steps (5%), elapsed 0m00s",
        "[apprentice] Train multitask: 20/200 steps (10%), loss=0.4210, tok_s=3700, "
        "elapsed 0m30s, ETA 4m30s",
        "[apprentice] Train multitask: 20/200 steps (10%), loss=0.4210, tok_s=3700, "
        "elapsed 0m30s, ETA 4m30s (done)",
    ]
    assert "\r" not in out.getvalue()


def test_a_log_gets_lines_a_terminal_a_bar_and_quiet_nothing(tmp_path):
    # stderr redirected to a file, as under nohup or in CI.
    log = tmp_path / "log.txt"
    code = (
        "from apprentice.progress import progress_bar\n"
        "bar = progress_bar(3, 'Evaluate', enabled=True, unit='examples')\n"
        "print(type(bar).__name__)\n"
        "[bar.update(1) for _ in range(3)]\n"
        "bar.close()\n"
        "quiet = progress_bar(3, 'Evaluate', enabled=False)\n"
        "quiet.update(3); quiet.close()\n"
    )
    with open(log, "w") as err:
        done = subprocess.run(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, check=True
        )
    assert done.stdout.strip() == "LineProgress"
    text = log.read_text()
    assert text.splitlines() == [
        "[apprentice] Evaluate: 1/3 examples (33%), elapsed 0m00s",
        "[apprentice] Evaluate: 3/3 examples (100%), elapsed 0m00s (done)",
    ]


def test_disabled_is_a_silent_bar():
    bar = progress_bar(5, "Bootstrap", enabled=False)
    assert not isinstance(bar, LineProgress) and bar.disable
