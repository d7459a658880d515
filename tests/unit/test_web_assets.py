"""The front-end extension must at least parse, or the whole web UI of the pack silently disappears."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed on this machine")
def test_web_extension_is_valid_javascript_module():
    for script in WEB.glob("*.js"):
        with script.open("rb") as source:
            result = subprocess.run(["node", "--input-type=module", "--check"], stdin=source, capture_output=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr.decode()}"
