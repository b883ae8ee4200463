"""One process of a node's workers leads its one-at-a-time work (checkpoints, witnesses, locators)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from node.server.lead import Lead


def test_one_holder_at_a_time_and_the_next_takes_over_on_release(tmp_path: Path) -> None:
    """A second Lead on the same file (another worker) does not lead until the first releases it."""
    first, second = Lead(tmp_path / "lead.lock"), Lead(tmp_path / "lead.lock")
    assert first.held() and first.held()
    assert not second.held()
    probe = [sys.executable, "-c", "import sys; from pathlib import Path; from node.server.lead import Lead; "
             "sys.exit(0 if Lead(Path(sys.argv[1])).held() else 3)", str(tmp_path / "lead.lock")]
    assert subprocess.run(probe, timeout=60).returncode == 3  # another process is refused too
    first.release()
    assert second.held()
    assert subprocess.run(probe, timeout=60).returncode == 3
    second.release()
    assert subprocess.run(probe, timeout=60).returncode == 0
