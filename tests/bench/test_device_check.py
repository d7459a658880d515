"""The GPU check's CPU smoke mode (`make device-check SMOKE=1`): every section's code runs on the tiny model, so
the script a lent GPU session runs in one go cannot rot between such sessions; the device runner's own pieces
(the carried host archive's filter, the av stand-in) are checked too."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device_check")
    run = subprocess.run([sys.executable, str(REPO / "bench" / "device_check.py"), "--smoke", "--world",
                          "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_every_section_runs_and_writes_its_json(smoke):
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["smoke"] and set(summary["sections"]) == {"correctness", "sampling", "training", "world"}
    assert all(section["ok"] for section in summary["sections"].values()), summary["sections"]
    assert summary["commit"] and summary["torch"]


def test_the_correctness_section_brings_back_the_half_precision_figures(smoke):
    correctness = json.loads((smoke / "correctness.json").read_text())
    assert correctness["ok"] and "1 passed" in correctness["summary_line"]
    empty = correctness["figures"]["sd1-bf16"]["empty_bank"]
    assert empty["max_abs_difference"] == 0.0 and empty["forward"] == ["torch.bfloat16"]


def test_sampling_and_training_report_paired_ratios_for_every_variant(smoke):
    sampling = json.loads((smoke / "sampling.json").read_text())["results"][0]
    assert set(sampling["paired_ratio"]) == {"1 concept", "20 concepts", "regional 2 regions", "regional 3 regions",
                                             "attention masks 2 regions", "attention masks 3 regions"}
    assert sampling["rounds"] == 2 and all(r > 0 for r in sampling["paired_ratio"].values())
    training = json.loads((smoke / "training.json").read_text())["results"][0]
    measured = {(r["trainer"], r["gradient_checkpointing"]) for r in training["rows"] if "s_per_step" in r}
    assert measured == {(t, c) for t in ("R2MoETrainConcept", "TrainLoraNode") for c in (False, True)}
    assert set(training["ratios_r2moe_over_trainlora"]) == {"checkpointing off", "checkpointing on"}
    assert set(training["largest_batch"]) == {"checkpointing off", "checkpointing on"}


def test_the_world_section_returns_its_weights_in_parts_under_the_size_limit(smoke):
    world = json.loads((smoke / "world.json").read_text())
    assert world["ok"] and world["parts"]
    parts = [smoke / "world" / name for name in world["parts"]]
    assert all(p.stat().st_size <= 15 * 1024 * 1024 for p in parts)
    joined = b"".join(p.read_bytes() for p in parts)
    from safetensors.torch import load

    assert load(joined), "the parts joined again are the checkpoint"


def test_the_carried_host_archive_leaves_out_tests_and_links(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from device_pack import keep_in_archive

    def info(name: str, link: bool = False) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type = tarfile.SYMTYPE if link else tarfile.REGTYPE
        return entry

    assert keep_in_archive(info("ComfyUI/comfy/sd.py")) is not None
    for dropped in ("ComfyUI/tests/x.py", "ComfyUI/custom_nodes/r2moe", "ComfyUI/comfy/__pycache__/sd.pyc"):
        assert keep_in_archive(info(dropped)) is None
    assert keep_in_archive(info("ComfyUI/comfy/link", link=True)) is None


def test_the_av_stand_in_satisfies_the_hosts_import_time_names():
    probe = ("import sys; sys.modules.pop('av', None); sys.path.insert(0, sys.argv[1]); import av; "
             "from av.container import InputContainer; from av.subtitles.stream import SubtitleStream; "
             "assert av.__file__.startswith(sys.argv[1])")
    subprocess.run([sys.executable, "-c", probe, str(REPO / "bench" / "device" / "av_stub")], check=True)
