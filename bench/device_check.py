"""The pack as GPU users run it, in one go on one lent NVIDIA GPU (`make device-check`), or as a CPU smoke run of the
same code on the tiny models (`make device-check SMOKE=1`, part of `make test`).

Sections, each written to its own JSON under --out as soon as it ends (a later failure keeps what came before):
- correctness: the half-precision host tests (tests/host/test_half_precision.py) on this device, fp16 and bf16,
  with every measured figure;
- sampling: R2MoEApplyBank (1 and 20 concepts) and R2MoERegionalApply (2 and 3 regions) against the stock
  KSampler, full-size SD1.5 UNet at 512 px and full-size SDXL UNet at 1024 px in fp16 (random weights, real
  shapes, built by the pinned host's own model classes), 20 steps, paired rounds (each variant's time the least
  of 3 back-to-back runs) until every spread is under 2 % or the section's share of the budget is spent;
- training: seconds per step and peak memory (torch.cuda.max_memory_allocated) of R2MoETrainConcept against the
  stock TrainLoraNode at rank 4 (SD1.5 512 px batch 2, SDXL 1024 px batch 1), gradient checkpointing off and on,
  and the largest R2MoE batch whose peak fits 12 GB and 24 GB (a line through two measured peaks, then checked
  by a run at that batch);
- world (--world): the benchmark world's recipe sweep (bench/world_sweep.py) on this device, the winner's
  weights and the sweep table back under --out.

Peaks are measured with the tiny checkpoints' text encoders and VAE beside the full-size UNet (the photos are
encoded by the node, and the trigger token is trained through the text encoder): a user's real CLIP-L (SD1.5)
or CLIP-L + bigG (SDXL) adds their fp16 weights, listed in the JSON as `real_text_encoder_bytes`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from provenance import HOST_PARTS, digest_files, git, provenance  # noqa: E402

LOG = logging.getLogger("r2moe.bench")
GIB = 1024**3
BUDGETS_GB = (12, 24)
TARGET_SPREAD = 0.02
MAX_BATCH = 64  # R2MoETrainConcept's batch_size widget maximum
# fp16 weights of the real text encoders a user's checkpoint carries (CLIP-L 123M parameters; OpenCLIP bigG 695M).
REAL_TEXT_ENCODER_BYTES = {"sd1": 2 * 123_060_480, "sdxl": 2 * (123_060_480 + 694_659_840)}


class Clock:
    """The wall-clock budget of the whole check: sections ask how much is left before they start more work."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def deadline(self, share: float) -> float:
        """A perf_counter time `share` of what is left from now."""
        return time.perf_counter() + share * self.left()


def write(out: Path, name: str, data: dict) -> None:
    record = provenance(Path(__file__), HOST_PARTS, also=("sampling.py", "training.py", "world_sweep.py"))
    (out / f"{name}.json").write_text(json.dumps({"provenance": record, **data}, indent=2, default=str))
    LOG.info("written %s", out / f"{name}.json")


def guarded(out: Path, name: str, section: Callable[[], dict], summary: dict) -> None:
    """Run one section; its result or its error goes to out/<name>.json and into the summary."""
    started = time.perf_counter()
    try:
        result = section()
        result["seconds"] = round(time.perf_counter() - started, 1)
        write(out, name, result)
        summary["sections"][name] = {"ok": result.get("ok", True), "seconds": result["seconds"]}
    except Exception as error:  # a section that breaks must not take the others' results with it
        LOG.exception("section %s failed", name)
        record = {"ok": False, "error": repr(error), "traceback": traceback.format_exc()[-4000:],
                  "seconds": round(time.perf_counter() - started, 1)}
        write(out, name, record)
        summary["sections"][name] = {"ok": False, "error": repr(error), "seconds": record["seconds"]}
    write(out, "summary", summary)


def correctness(out: Path, smoke: bool, gpu: bool, clock: Clock) -> dict:
    """The half-precision host tests in a fresh process on this device; their measured figures come back."""
    record = out / "correctness_figures.json"
    env = dict(os.environ, R2MOE_HALF_RECORD=str(record), R2MOE_TEST_DEVICE="gpu" if gpu else "cpu")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x" if smoke else "-rA",
               str(REPO / "tests" / "host" / "test_half_precision.py")]
    if importlib.util.find_spec("pytest_timeout") is not None:  # one stuck test must not take the whole share
        command += ["--timeout", "90"]
    if smoke:  # one case of one test: the same fixture and recording path, seconds on a CPU
        command += ["-k", "test_the_unet_really_computes and sd1 and bf16"]
    started, log = time.perf_counter(), out / "correctness_log.txt"
    # The log goes to a file as it is written, so a run cut off by its time limit still says where it was.
    with log.open("w") as sink:
        try:
            returncode = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
                                        timeout=max(150.0, 0.4 * clock.left())).returncode
        except subprocess.TimeoutExpired:
            returncode = -9
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    figures = json.loads(record.read_text()) if record.is_file() else {}
    record.unlink(missing_ok=True)
    if returncode == 0:
        log.unlink()
    return {"ok": returncode == 0, "returncode": returncode, "timed_out": returncode == -9,
            "summary_line": lines[-1] if lines else "",
            "outcomes": [line for line in lines if line.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED"))],
            "failures": [line for line in lines if line.startswith("E ")][:40],
            "figures": figures, "wall_s": round(time.perf_counter() - started, 1)}


def models_for(host: Any, smoke: bool, gpu: bool) -> list[tuple[str, str, int, Callable[[], Any], tuple]]:
    """(label, family, pixels, build MODEL, (CLIP, VAE)) for each model the check runs on."""
    from comfy_inprocess import call_node, family_checkpoint
    from sampling import full_size_model

    if smoke:
        model, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
        return [("tiny SD1.5-layout", "sd1", 64, lambda: model, (clip, vae))]
    _, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
    _, xl_clip, xl_vae = call_node("CheckpointLoaderSimple", ckpt_name=family_checkpoint("sdxl"))
    return [
        ("full-size SD1.5 UNet (random, fp16)", "sd1", 512, lambda: full_size_model(host, gpu), (clip, vae)),
        ("full-size SDXL UNet (random, fp16)", "sdxl", 1024, lambda: full_size_model(host, gpu, "sdxl"),
         (xl_clip, xl_vae)),
    ]


def sampling(host: Any, smoke: bool, gpu: bool, clock: Clock, out: Path) -> dict:
    from sampling import bench_model

    results: list[dict] = []
    entries = models_for(host, smoke, gpu)
    for index, (label, _, pixels, build, (clip, vae)) in enumerate(entries):
        if clock.left() < 60 and not smoke:
            results.append({"model": label, "skipped": "the check's time budget ran out"})
            continue
        model = build()
        # Share what is left between this model and the ones after it (SDXL rounds take ~4x SD1.5's).
        share = 0.25 if (index == 0 and len(entries) > 1) else 0.5
        result = bench_model(
            host, label, model, clip, steps=2 if smoke else 20, rounds=2 if smoke else 4, size=pixels,
            warmup_steps=1, max_rounds=2 if smoke else 40, target_spread=TARGET_SPREAD,
            deadline=clock.deadline(share), repeats=1 if smoke else 3, vae=vae,
        )
        result["spread_target_met"] = all(s < TARGET_SPREAD for s in result["paired_spread"].values())
        results.append(result)
        write(out, "sampling", {"results": results, "partial": True})  # kept if a later model is cut off
        del model
        free_device_memory()
    return {"results": results, "target_spread": TARGET_SPREAD}


def free_device_memory() -> None:
    import comfy.model_management
    import torch

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measured(run: Callable[..., float], *args: Any, gpu: bool, **kwargs: Any) -> tuple[float, int | None]:
    """Wall seconds of run(*args, **kwargs) and its peak allocated device memory (None on a CPU), after clearing
    the device."""
    import torch

    free_device_memory()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    seconds = run(*args, **kwargs)
    return seconds, (torch.cuda.max_memory_allocated() if gpu else None)


def training(host: Any, smoke: bool, gpu: bool, clock: Clock, out: Path) -> dict:
    results: list[dict] = []
    entries = models_for(host, smoke, gpu)
    for index, (label, family, pixels, build, (clip, vae)) in enumerate(entries):
        if clock.left() < 90 and not smoke:
            results.append({"model": label, "skipped": "the check's time budget ran out"})
            continue
        share = 0.35 if index == 0 and len(entries) > 1 else 0.6
        results.append(train_model(label, family, pixels, build(), clip, vae, smoke, gpu, clock, share))
        write(out, "training", {"results": results, "partial": True})  # kept if a later model is cut off
        free_device_memory()
    return {"results": results}


def train_model(label: str, family: str, pixels: int, model: Any, clip: Any, vae: Any, smoke: bool, gpu: bool,
                clock: Clock, share: float) -> dict:
    """Both trainers, gradient checkpointing off and on: s/step as (long run - short run) / step difference."""
    import torch
    from comfy_inprocess import call_node
    from training import lora_run, r2moe_run

    batch = 1 if family == "sdxl" else 2
    short, long = (1, 3) if smoke else ((1, 6) if family == "sdxl" else (2, 12))
    images = torch.rand(4, pixels, pixels, 3, generator=torch.Generator().manual_seed(0))
    bank = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with torch.inference_mode():
        encoded = vae.encode(images).float()
    latents = [{"samples": encoded[i : i + 1]} for i in range(len(encoded))]
    positive = call_node("CLIPTextEncode", clip=clip, text="photo of a dog")[0]
    trainers = {
        "R2MoETrainConcept": partial(r2moe_run, model, clip, vae, bank, images, res=pixels),
        "TrainLoraNode": partial(lora_run, model, latents, positive, dtype="bf16" if gpu else "fp32"),
    }
    rows: list[dict] = []
    deadline = clock.deadline(share)
    for checkpointing in (False, True):
        for trainer, run in trainers.items():
            if time.perf_counter() > deadline and rows:
                rows.append({"trainer": trainer, "gradient_checkpointing": checkpointing, "skipped": "time budget"})
                continue
            run(short, checkpointing=checkpointing, batch=batch)  # warm-up: kernels, first load
            short_s, _ = measured(run, short, checkpointing=checkpointing, batch=batch, gpu=gpu)
            long_s, peak = measured(run, long, checkpointing=checkpointing, batch=batch, gpu=gpu)
            rows.append({"trainer": trainer, "gradient_checkpointing": checkpointing, "batch": batch,
                         "s_per_step": (long_s - short_s) / (long - short), "peak_bytes": peak,
                         "peak_gib": None if peak is None else round(peak / GIB, 2)})
            LOG.info("%s %s ckpt=%s: %.3f s/step, peak %s GiB", label, trainer, checkpointing,
                     rows[-1]["s_per_step"], rows[-1]["peak_gib"])
    ratios = {}
    for checkpointing in (False, True):
        ours, theirs = (next((r for r in rows if r["trainer"] == name and "s_per_step" in r
                              and r["gradient_checkpointing"] == checkpointing), None) for name in trainers)
        if ours and theirs and theirs["s_per_step"] > 0:
            ratios[f"checkpointing {'on' if checkpointing else 'off'}"] = {
                "time_ratio": ours["s_per_step"] / theirs["s_per_step"],
                "peak_ratio": ours["peak_bytes"] / theirs["peak_bytes"] if gpu else None}
    fits = batch_fits(trainers["R2MoETrainConcept"], rows, batch, gpu, clock, smoke)
    return {"model": label, "family": family, "pixels": pixels, "rank": 4, "rows": rows,
            "ratios_r2moe_over_trainlora": ratios, "largest_batch": fits,
            "real_text_encoder_bytes": REAL_TEXT_ENCODER_BYTES[family]}


def batch_fits(run: Callable[..., float], rows: list[dict], batch: int, gpu: bool, clock: Clock,
               smoke: bool) -> dict:
    """Largest R2MoE batch whose peak stays within each budget: peak(b) = a + b·c through two measured batches,
    then one 1-step run at the predicted batch to check it."""
    fits = {}
    for checkpointing in (False, True):
        key = f"checkpointing {'on' if checkpointing else 'off'}"
        first = next((r for r in rows if r["trainer"] == "R2MoETrainConcept" and "peak_bytes" in r
                      and r["gradient_checkpointing"] == checkpointing), None)
        if first is None or (clock.left() < 60 and not smoke):
            continue
        other = batch * 2
        _, second_peak = measured(run, 1, checkpointing=checkpointing, batch=other, gpu=gpu)
        if not gpu:  # smoke: the path runs; there is no device memory to read
            fits[key] = {"peaks_bytes": {batch: None, other: None}}
            continue
        per_item = (second_peak - first["peak_bytes"]) / (other - batch)
        fixed = first["peak_bytes"] - batch * per_item
        entry: dict[str, Any] = {"peaks_bytes": {batch: first["peak_bytes"], other: second_peak},
                                 "per_item_bytes": per_item, "fixed_bytes": fixed}
        for budget in BUDGETS_GB:
            limit = budget * 1e9
            predicted = int((limit - fixed) // per_item) if per_item > 0 else MAX_BATCH
            check: dict[str, Any] = {"predicted": predicted, "node_limit": MAX_BATCH}
            if predicted >= 1 and clock.left() > 45:
                _, peak = measured(run, 1, checkpointing=checkpointing, batch=min(predicted, MAX_BATCH), gpu=gpu)
                check.update(checked_peak_gib=round(peak / GIB, 2), fits=peak <= limit)
            entry[f"{budget} GB"] = check
        fits[key] = entry
    return fits


def world(out: Path, smoke: bool, clock: Clock) -> dict:
    """The world's recipe sweep (bench/world_sweep.py: one VAE, several UNet recipes at the same steps, each
    judged by eval_world's readings, the best kept) in what is left of the budget. The winner's weights come back
    in 15 MiB parts (out/world/world.safetensors.partN; `cat` joins them), with sweep.json and the log."""
    target = out / "world"
    target.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="r2moe_world_"))
    command = [sys.executable, str(REPO / "bench" / "world_sweep.py"), "--out", str(work),
               "--budget-s", f"{max(60.0, clock.left() - 40):.0f}"]
    command += shlex.split(os.environ.get("SWEEP_ARGS", ""))  # e.g. SWEEP_ARGS="--init-from W --class-objects 0.2"
    if smoke:  # one recipe at the shipped size: the path, not the numbers
        command += ["--smoke", "--device", "cpu", "--recipes", "v_loss", "--workers", "2"]
    world_size = "64" if smoke else os.environ.get("R2MOE_WORLD_SIZE", "128")
    env = os.environ | {"R2MOE_WORLD_SIZE": world_size, "PYTHONUNBUFFERED": "1"}
    with (target / "sweep_log.txt").open("w") as log:
        run = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    parts = []
    weights = work / "world.safetensors"
    if weights.is_file():
        data, size = weights.read_bytes(), 15 * 1024 * 1024
        for i in range(0, len(data), size):
            part = target / f"world.safetensors.part{i // size}"
            part.write_bytes(data[i : i + size])
            parts.append(part.name)
    if (work / "sweep.json").is_file():
        shutil.copy(work / "sweep.json", target / "sweep.json")
    return {"ok": run.returncode == 0, "command": command[1:], "parts": parts,
            "log_tail": (target / "sweep_log.txt").read_text()[-3000:]}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, seconds: the same code path")
    parser.add_argument("--world", action="store_true", help="also pretrain the benchmark world")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole check")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "output" / "device_check"))
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(opts.budget_s)
    import torch

    gpu = torch.cuda.is_available() and not opts.smoke
    if not gpu and not opts.smoke:
        raise SystemExit("No CUDA device here: run `make device-check SMOKE=1` for the CPU smoke run.")
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if gpu else f"CPU smoke ({platform.machine()})",
        "torch": torch.__version__, "python": platform.python_version(), "smoke": opts.smoke,
        "commit": _commit(), "code_digest": _code_digest(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sections": {},
    }
    if gpu:
        summary["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    wanted = set(filter(None, opts.only.split(","))) or {"correctness", "sampling", "training", "world"}
    if "correctness" in wanted:
        guarded(opts.out, "correctness", lambda: correctness(opts.out, opts.smoke, gpu, clock), summary)
    if wanted & {"sampling", "training"}:
        from comfy_inprocess import boot

        host = boot(Path(tempfile.mkdtemp(prefix="r2moe_device_")), gpu=gpu)
        summary["host"] = _host_version()
        if "sampling" in wanted:
            guarded(opts.out, "sampling", lambda: sampling(host, opts.smoke, gpu, clock, opts.out), summary)
        if "training" in wanted:
            guarded(opts.out, "training", lambda: training(host, opts.smoke, gpu, clock, opts.out), summary)
    if opts.world and "world" in wanted:
        guarded(opts.out, "world", lambda: world(opts.out, opts.smoke, clock), summary)
    summary["wall_s"] = round(time.perf_counter() - clock.start, 1)
    write(opts.out, "summary", summary)
    failed = [name for name, s in summary["sections"].items() if not s.get("ok", True)]
    LOG.info("device check on %s in %.0f s; %s", summary["device"], summary["wall_s"],
             f"failed sections: {failed}" if failed else "every section ran")
    sys.exit(1 if failed else 0)


def _commit() -> str:
    return git("rev-parse", "--short", "HEAD") or "unknown"


def _code_digest() -> str:
    """The digest of the pack's and the benchmark's Python sources: names the code that ran even where the copy's
    git metadata is stale or absent (a device machine gets the working tree, not necessarily the latest commit)."""
    folders = ("nodes", "r2moe_core", "bench", "tests")
    return digest_files([path for folder in folders for path in (REPO / folder).rglob("*.py")])


def _host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


if __name__ == "__main__":
    main()
