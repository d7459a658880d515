"""Start a headless ComfyUI with this pack and drive it over its HTTP API (standard library only).

Used by `make demo`, `make serve`, the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

LOG = logging.getLogger("r2moe.server")
REPO = Path(__file__).resolve().parent.parent
HOST_ROOT = REPO / ".host" / "ComfyUI"


DEV_MODELS = REPO / "scripts" / "dev_models"  # development custom node: the tiny and world checkpoints
TINY_BUILDER = DEV_MODELS / "tiny_models.py"


def tiny_tag() -> str:
    """Digest of the tiny-model builder: a cached checkpoint built by other code is stale."""
    return hashlib.sha256(TINY_BUILDER.read_bytes()).hexdigest()[:16]


def tiny_checkpoint_current(path: Path, seed: int = 0) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get("r2moe_tiny") == f"seed={seed} builder={tiny_tag()}"


def ensure_tiny_checkpoint(path: Path, family: str = "sd1") -> Path:
    """Build (or rebuild, when stale) a tiny checkpoint of a model family in a separate process."""
    if not tiny_checkpoint_current(path):
        script = REPO / "scripts" / "make_tiny_checkpoint.py"
        command = [sys.executable, str(script), "--out", str(path), "--tag", tiny_tag(), "--family", family]
        subprocess.run(command, check=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def has_gpu(python: str = sys.executable) -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def server_command(
    port: int, base_dir: Path | None = None, output_dir: Path | None = None, gpu: bool = False,
    python: str = sys.executable,
) -> list[str]:
    cmd = [python, str(HOST_ROOT / "main.py"), "--listen", "127.0.0.1", "--port", str(port)]
    if not gpu:
        # --cpu is required without CUDA; PyTorch SDPA is 2-3x faster than the default sub-quadratic kernel on CPU.
        cmd += ["--cpu", "--use-pytorch-cross-attention"]
    if base_dir is not None:
        cmd += ["--base-directory", str(base_dir)]
    if output_dir is not None:
        cmd += ["--output-directory", str(output_dir)]
    return cmd


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1 and a minimal client for /object_info, /prompt and /history."""

    def __init__(
        self,
        port: int | None = None,
        base_dir: Path | None = None,
        output_dir: Path | None = None,
        log_path: Path | None = None,
        gpu: bool | None = None,
        tiny_models: bool = True,
        extra_args: list[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gpu = has_gpu() if gpu is None else gpu
        self.cmd = server_command(self.port, base_dir, output_dir, self.gpu, python) + list(extra_args or [])
        self.log_path = log_path
        self.env = dict(os.environ, R2MOE_TINY_MODELS="1" if tiny_models else "0", PYTHONUNBUFFERED="1")
        self.proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd, cwd=HOST_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                self.get("/object_info/KSampler")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post_prompt(self, graph: dict[str, Any]) -> str:
        body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"ComfyUI refused the workflow: {exc.read().decode(errors='replace')}") from exc

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Poll /history until the prompt finished; raise with ComfyUI's own error message if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", True):
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"workflow failed: {json.dumps(errors)[:2000]}")
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running the workflow; see {self.log_path}")
            time.sleep(0.25)
        raise TimeoutError(f"workflow {prompt_id} not finished after {timeout:.0f} s")

    def run(self, graph: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        return self.wait(self.post_prompt(graph), timeout)
