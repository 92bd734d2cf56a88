"""gate serve settles its heap after the boot: the collector no longer walks the boot's objects."""

from __future__ import annotations

import subprocess
import sys


def test_settle_heap_freezes_the_boot_and_raises_the_young_threshold() -> None:
    code = (
        "import gc\n"
        "from gate import app, cli\n"
        "before = gc.get_freeze_count()\n"
        "cli._settle_heap()\n"
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0], cli.GC_YOUNG_THRESHOLD)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, young, wanted = map(int, out.stdout.split())
    assert before == 0
    assert frozen > 10_000  # the modules, the app factory and what they made
    assert young == wanted > 700
