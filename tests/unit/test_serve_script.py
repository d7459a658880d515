"""`make serve COMFYUI=dir` starts the user's own ComfyUI folder, and refuses a folder that cannot be one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "serve.py"
RECORDER = """import json, os, sys
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.json"), "w").write(
    json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "tiny": os.environ.get("R2MOE_TINY_MODELS")}))
"""


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SERVE), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO / "scripts")


def test_a_users_comfyui_folder_is_started_as_it_is(tmp_path):
    (tmp_path / "main.py").write_text(RECORDER)
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "comfyui-r2moe").symlink_to(REPO, target_is_directory=True)
    result = serve("--host", str(tmp_path), "--port", "8765")
    assert result.returncode == 0, result.stderr
    started = json.loads((tmp_path / "started.json").read_text())
    assert started["argv"][:4] == ["--listen", "127.0.0.1", "--port", "8765"]
    assert Path(started["cwd"]) == tmp_path.resolve() and started["tiny"] == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom_nodes", "main.py", "started.json"], "nothing added"


def test_folders_that_cannot_be_served_are_refused_with_what_to_do(tmp_path):
    result = serve("--host", str(tmp_path))
    assert result.returncode == 2 and "is not a ComfyUI folder (it has no main.py)" in result.stderr
    (tmp_path / "main.py").write_text("raise SystemExit('must not start')")
    result = serve("--host", str(tmp_path))
    assert result.returncode == 2 and "the R2MoE pack is not in" in result.stderr and "ln -s" in result.stderr
