"""The faults tier's client for a real ComfyUI server: outcomes of refused, failed and interrupted prompts."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from comfy_server import ComfyServer


class FaultServer(ComfyServer):
    base: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def post(self, path: str, payload: dict[str, Any] | None = None) -> int:
        data = json.dumps(payload or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    def submit(self, graph: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /prompt and return (HTTP status, JSON body): a refused graph is an answer here, not an exception."""
        data = json.dumps({"prompt": graph}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def finished(self, prompt_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """The /history entry of a prompt, whatever its outcome (success, error, interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s")

    def alive(self) -> bool:
        return "KSampler" in self.get("/object_info/KSampler")


def status_messages(entry: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m[1] for m in entry.get("status", {}).get("messages", []) if m[0] == kind]
