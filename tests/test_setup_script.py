"""``make setup`` says what it is doing: each step, a heartbeat while tools are silent, its elapsed time."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _helpers() -> str:
    """The step helpers of setup.sh, to run them without installing anything."""
    text = SETUP.read_text()
    start, end = text.index("STEP_NAME="), text.index("\ntrap ")
    return text[start : text.index("\n", end + 1)]


def test_each_step_announces_itself_and_its_elapsed_time_on_stderr() -> None:
    script = f'set -euo pipefail\n{_helpers()}\nstep "đang tải" "about 2 s"; sleep 2; step "build" "1 s"; step_done\n'
    done = subprocess.run([BASH, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == ""  # `TOKEN=$(make token)` must get the token alone, even on a first run
    lines = done.stderr.splitlines()
    assert lines[0] == "setup: đang tải (first time only; about 2 s) ..."
    assert re.fullmatch(r"setup:   done in [23] s: đang tải", lines[1])
    assert lines[2] == "setup: build (first time only; 1 s) ..."
    assert re.fullmatch(r"setup:   done in [01] s: build", lines[3])


def test_a_set_up_checkout_prints_nothing_on_stdout() -> None:
    done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=600, check=True, cwd=REPO)
    assert done.stdout == ""
    assert "setup: ok" in done.stderr
