"""The pack installed the way ComfyUI-Manager installs it: `git clone` into a ComfyUI's custom_nodes and
`pip install -r requirements.txt` into a fresh virtual environment; the real server then lists every node.

The fresh environment gets the pack's requirements first; torch and ComfyUI's own packages come after them from
the pinned host environment (a .pth line), as they would already be in a user's ComfyUI. The clone is of the
committed tree (HEAD), so a file that is only in a working copy, or ignored by git, cannot make this pass."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from comfy_inprocess import REPO, require_host
from comfy_server import ComfyServer

from r2moe_testkit.pack_nodes import pack_node_ids


def test_git_clone_and_pip_install_requirements_give_every_node(tmp_path):
    require_host()
    base = tmp_path / "users_comfyui"
    for folder in ("custom_nodes", "models/r2moe", "input", "output", "temp", "user"):
        (base / folder).mkdir(parents=True)
    pack = base / "custom_nodes" / "ComfyUI-R2MoE"
    subprocess.run(["git", "clone", "-q", str(REPO), str(pack)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                    str(pack / "requirements.txt")], check=True, timeout=900)
    own_site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    (Path(own_site) / "zz_pinned_host.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    log = tmp_path / "server.log"
    with ComfyServer(base_dir=base, log_path=log, gpu=False, tiny_models=False, python=str(python)) as server:
        info = server.get("/object_info")
    ids = pack_node_ids()
    missing = sorted(ids - set(info))
    assert len(ids) >= 20 and not missing, f"missing from /object_info: {missing}; see {log}"
    assert {info[i]["python_module"] for i in ids} == {"custom_nodes.ComfyUI-R2MoE"}
    failed = [line for line in log.read_text(errors="replace").splitlines() if "IMPORT FAILED" in line]
    assert not [line for line in failed if "R2MoE" in line], failed  # (the host's own optional extras may fail)
    assert str(venv) in subprocess.check_output([str(python), "-c", "import safetensors; print(safetensors.__file__)"],
                                                text=True), "the pack's requirements come from the fresh venv"
