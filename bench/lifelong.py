"""Lifelong-learning benchmark on the offline world model: R2MoE against the baselines, side by side.

    python bench/lifelong.py                 # the committed run: 10 world concepts, every method on seed 0, the
                                             # four methods the goals compare also on seeds 1 and 2 (both tracks)
    python bench/lifelong.py --seeds 0,1,2   # every method on 3 seeds (about 3x the CPU time)
    python bench/lifelong.py --quick         # 3 concepts, few steps, 1 seed: checks the pipeline in minutes
    python bench/lifelong.py --concepts bench/world/concepts_30.json --spread-seeds ""   # the long sequence
    python bench/lifelong.py --tracks photo  # one track now, the others kept from OUT/lifelong.json (a run
                                             # longer than a session, split by track; each records its code)

Writes under --out (default bench/results): lifelong.json (all numbers), lifelong.md (the tables), and PNG plots
(forgetting per task, parameters per task, the last task's images per method). Deterministic on CPU for a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import library_versions, part_digests, provenance
from world.cache import evaluator_from_state, world_evaluator, write_pickle
from world.checkpoint import SHIPPED, load_world
from world.concepts import load_concepts
from world.evaluators import BENCH_EVALUATOR, QUICK_BENCH_EVALUATOR
from world.methods import METHODS, SIMPLIFICATIONS, Budget
from world.plots import grid_image, heatmap, line_plot
from world.protocol import ConceptData, EvalSettings, MethodRun, References, World, run_method
from world.vocab import SIZE

from r2moe_core.train.concept_photos import load_concept_folder, make_captions, square_resize

LOG = logging.getLogger("r2moe.bench.lifelong")
HERE = Path(__file__).resolve().parent
DEFAULT_PHOTOS = HERE.parents[1] / "shared" / "data" / "concepts"
METRICS = ("image_alignment", "image_alignment_heldout", "image_alignment_train", "text_alignment", "forgetting",
           "params_added", "bytes_added", "train_s_per_task", "sample_s_per_image", "class_drift",
           "class_drift_unseen", "class_drift_other", "expert_kept_share")
TRACKS = ("world", "heldout", "photo")
SPREAD = ("image_alignment", "image_alignment_heldout", "image_alignment_train", "text_alignment", "forgetting",
          "class_drift", "class_drift_unseen", "class_drift_other", "expert_kept_share")  # with std and per seed


def world_concepts(path: Path, images: int, limit: int | None) -> list[ConceptData]:
    return [ConceptData.from_spec(spec, images) for spec in load_concepts(path)[:limit]]


def photo_concepts(folder: Path, limit: int | None) -> list[ConceptData]:
    """Every sub-folder with images is a concept `<photoN>` of class = folder name, resized to the world's size.
    Its last photo (by name) is held out: never trained on, it is what image alignment is measured against."""
    out = []
    for i, sub in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())[:limit]):
        images, given = load_concept_folder(sub)
        if len(images) < 3:
            raise SystemExit(f"{sub} has {len(images)} photos; the photo track needs at least 3 per concept "
                             "(one is held out)")
        token, word = f"<photo{i + 1}>", sub.name.rstrip("0123456789").replace("_", " ").split()[-1]
        pixels = [(square_resize(im, SIZE).numpy() * 255).round().astype(np.uint8) for im in images]
        captions = make_captions(len(images), token, word, "photo of a {token} {class}", given)
        out.append(ConceptData(token, word, pixels[:-1], captions[:-1], pixels[-1:]))
    return out


def aggregate(runs: list[MethodRun]) -> dict[str, float | list[float]]:
    """Mean over seeds, plus the spread (sample std) and the per-seed values when there is more than one."""
    per_seed = [r.summary() for r in runs]
    out: dict[str, float | list[float]] = {}
    for metric in METRICS:
        if metric not in per_seed[0]:
            continue
        values = [s[metric] for s in per_seed]
        out[metric] = float(np.mean(values)) if metric not in ("params_added", "bytes_added") else int(values[0])
        if metric in ("class_drift", "class_drift_unseen", "class_drift_other", "expert_kept_share"):
            out[metric] = round(out[metric], 4)
        if len(values) > 1 and metric in SPREAD:
            out[f"{metric}_std"] = round(float(np.std(values, ddof=1)), 2)
            out[f"{metric}_seeds"] = values
    for metric in ("image_alignment", "image_alignment_heldout", "image_alignment_train", "text_alignment",
                   "forgetting", "train_s_per_task"):
        out[metric] = round(float(out[metric]), 2)
    out["params_per_task"] = runs[0].params
    if runs[0].gate_matrix is not None:
        out["gate_matrix_seed0"] = runs[0].gate_matrix
    out["forgetting_curve"] = [round(float(np.mean([curve(r)[t] for r in runs])), 2) for t in range(len(runs[0].ia))]
    out["loss_by_quarter"] = loss_by_quarter(runs)
    if runs[0].ta_parts:
        out["text_alignment_parts"] = {k: round(float(np.mean([r.ta_parts[k] for r in runs])), 2)
                                       for k in runs[0].ta_parts}
    return out


def loss_by_quarter(runs: list[MethodRun]) -> list[float]:
    """Mean training loss in each quarter of a task's steps (over tasks and seeds): the budget check. A last
    quarter no lower than the third, within the step-to-step noise, means the loss has stopped falling."""
    quarters = [[float(np.mean(q)) for q in np.array_split(np.asarray(losses), 4)]
                for run in runs for losses in run.losses if len(losses) >= 4]
    return [round(float(v), 4) for v in np.mean(quarters, axis=0)] if quarters else []


def curve(run: MethodRun) -> list[float]:
    """After task t: mean drop of the concepts learned so far from their own-task IA (points)."""
    own = {c: run.ia[i][c] for i, c in enumerate(run.order)}
    return [float(np.mean([own[c] - ia[c] for c in list(ia)])) for ia in run.ia]


_WORKER: dict = {}


def _worker_init(checkpoint: Path, evaluator_state: dict, threads: int) -> None:
    """Each worker process loads its own world and evaluator once (one thread each: small ops scale badly)."""
    torch.set_num_threads(threads)
    evaluator = evaluator_from_state(evaluator_state)
    state = hashlib.sha256(b"".join(v.numpy().tobytes() for v in evaluator_state.values())).hexdigest()
    # Float sums depend on the code this script reads (its import closure: the core and world modules included),
    # the libraries and the thread count: a job cached under any other of these is recomputed.
    code = repr((part_digests(Path(__file__), ("reads",))["reads"], library_versions(), threads)).encode()
    _WORKER.update(world=World(*load_world(checkpoint)), evaluator=evaluator, photo=None,
                   checkpoint=checkpoint, evaluator_digest=state, code_digest=code)


def _features(kind: str):
    if kind == "photo":
        if _WORKER["photo"] is None:
            from world.photo_features import PhotoFeatures

            _WORKER["photo"] = PhotoFeatures()
        return _WORKER["photo"]
    evaluator = _WORKER["evaluator"]

    def embed(images: list[np.ndarray]) -> torch.Tensor:
        from world.evaluators import to_tensor

        with torch.no_grad():
            return evaluator.embed(to_tensor(images))
    return embed


def _job_key(args: tuple, checkpoint: Path) -> str:
    """Everything a job's result depends on: reruns with more seeds reuse the finished (method, seed) jobs, and
    a change to the code this script reads, a library version or the thread count invalidates them."""
    name, seed, kind, concepts, budget, settings = args
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(checkpoint.read_bytes()).digest())
    digest.update(_WORKER["code_digest"])
    for c in concepts:
        digest.update(c.token.encode() + c.class_word.encode() + "|".join(c.captions).encode())
        for image in c.images:
            digest.update(image.tobytes())
        for image in c.heldout:
            digest.update(b"heldout" + image.tobytes())
    digest.update(repr((name, seed, kind, budget, settings, _WORKER["evaluator_digest"])).encode())
    return f"{kind}_{name}_{seed}_{digest.hexdigest()[:16]}"


def _job(args: tuple) -> MethodRun | dict[str, list[np.ndarray]]:
    job, cache = args
    path = cache / f"{_job_key(job, _WORKER['checkpoint'])}.pkl" if cache else None
    if path is not None and path.is_file():
        return pickle.loads(path.read_bytes())
    result = _run_job(job)
    if path is not None:
        write_pickle(path, result)
    return result


def _run_job(args: tuple) -> MethodRun | dict[str, list[np.ndarray]]:
    name, seed, kind, concepts, budget, settings = args
    features = _features(kind)
    references = References.of(concepts, features)
    world = _WORKER["world"]
    if name == "base":
        return run_base(world, concepts, settings, seed)
    evaluator = _WORKER["evaluator"] if kind != "photo" else None  # TA needs the world evaluator
    return run_method(name, world, concepts, budget, features, references, settings, seed, evaluator)


def run_track(label: str, concepts: list[ConceptData], methods: list[str], seeds: list[int], budget: Budget,
              settings: EvalSettings, pool, out: Path, cache: Path | None,
              extra: dict[str, list[int]] | None = None) -> dict:
    """Every (method, seed) of one track as independent jobs on the worker pool; results in a fixed order."""
    from world.protocol import image_alignments

    seeds_of = {name: list(dict.fromkeys([*seeds, *(extra or {}).get(name, [])])) for name in methods}
    all_seeds = sorted({s for v in seeds_of.values() for s in v} | set(seeds))
    seeds_of["base"] = all_seeds
    jobs = [(name, seed, label, concepts, budget, settings) for name in ["base", *methods] for seed in seeds_of[name]]
    done = pool.map(_job, [(j, cache) for j in jobs], chunksize=1)
    outputs = dict(zip([(j[0], j[1]) for j in jobs], done, strict=True))
    features = _features(label)
    references = References.of(concepts, features)
    result: dict = {"methods": {}, "concepts": [c.token for c in concepts], "seeds": all_seeds,
                    "references": {"train_images": [len(c.images) for c in concepts],
                                   "heldout_images": [len(c.heldout) for c in concepts]}}
    base = {kind: [float(np.mean(list(image_alignments(features, outputs[("base", s)], refs).values())))
                   for s in all_seeds] for kind, refs in (("heldout", references.heldout), ("train", references.train))}
    result["base_model"] = {"image_alignment": round(float(np.mean(base["heldout"])), 2),
                            "image_alignment_train": round(float(np.mean(base["train"])), 2),
                            "image_alignment_seeds": {s: round(v, 2) for s, v in zip(all_seeds, base["heldout"],
                                                                                      strict=True)}}
    last_images: dict[str, dict[str, list[np.ndarray]]] = {}
    for name in methods:
        runs = [outputs[(name, seed)] for seed in seeds_of[name]]
        result["methods"][name] = aggregate(runs) | {"seeds": seeds_of[name]}
        last_images[name] = runs[0].final_images
        LOG.info("%s %s: %s", label, name, {k: v for k, v in result["methods"][name].items() if k in METRICS})
    curves = {n: [0.0, *m["forgetting_curve"]] for n, m in result["methods"].items()}
    line_plot(curves, f"{label}: mean IA drop of the concepts learned so far (points)", "task",
              out / f"lifelong_{label}_forgetting.png")
    params = {n: [0, *m["params_per_task"]] for n, m in result["methods"].items()}
    line_plot(params, f"{label}: parameters added (cumulative)", "task", out / f"lifelong_{label}_params.png")
    grid_image(last_images, [c.images[0] for c in concepts], [c.token for c in concepts],
               out / f"lifelong_{label}_grid.png")
    if "gate_matrix_seed0" in result["methods"].get("r2moe", {}):
        matrix = np.array(result["methods"]["r2moe"]["gate_matrix_seed0"])
        order = outputs[("r2moe", seeds_of["r2moe"][0])].order
        experts = ["aux", *(str(i + 1) for i in range(len(order)))]
        heatmap(matrix, [f"{i + 1} {t}" for i, t in enumerate(order)], experts,
                f"{label}: r2moe gate weight (row: prompt of task t's concept; column: expert)",
                out / f"lifelong_{label}_gates.png")
    return result


def kept_tracks(path: Path, running: list[str], settings: dict) -> dict[str, dict]:
    """The tracks of an earlier result at `path` that this run does not redo, in TRACKS order; refuses to merge
    tracks made with other settings (budget, evaluation, checkpoint, concept sets), which would not compare."""
    if not path.is_file() or set(running) >= set(TRACKS):
        return {}
    earlier = json.loads(path.read_text())
    differ = [k for k in ("budget", "eval", "checkpoint", "concepts", "heldout_concepts")
              if earlier.get("settings", {}).get(k) != settings.get(k)]
    if differ:
        raise SystemExit(f"{path} was made with other settings ({', '.join(differ)}); run every track "
                         f"(--tracks {','.join(TRACKS)}) or write elsewhere with --out.")
    keep = {name: track for name, track in earlier.get("tracks", {}).items() if name not in running}
    for track in keep.values():
        track.setdefault("provenance", earlier.get("provenance"))
    return keep


def run_base(world: World, concepts: list[ConceptData], settings: EvalSettings, seed: int
             ) -> dict[str, list[np.ndarray]]:
    from world.protocol import alone_prompts, generate

    n = settings.images_per_concept
    images = generate(world, None, [p for c in concepts for p in alone_prompts(c, n, token=False)], seed, settings)
    return {c.token: images[i * n:(i + 1) * n] for i, c in enumerate(concepts)}


def _cell(m: dict, key: str) -> str:
    return f"{m[key]:.1f}" + (f" ± {m[key + '_std']:.1f}" if f"{key}_std" in m else "")


def markdown(results: dict) -> str:
    lines = []
    for track, data in results["tracks"].items():
        seeds = data.get("seeds", results["settings"]["seeds"])
        lines += [f"### {track} track ({len(data['concepts'])} concepts, seeds {seeds})", ""]
        if len(seeds) > 1:
            lines += ["Rows marked (N seeds) are the mean ± sample std over those seeds; other rows ran on seed "
                      f"{seeds[0]} only.", ""]
        lines += ["| method | IA held-out ↑ | IA train photos | TA ↑ | forgetting ↓ | class drift ↓ | drift, unseen "
                  "prompts ↓ | drift, other classes ↓ | experts kept | params added | bytes added | train s/task | "
                  "sample s/img |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in data["methods"].items():
            ta = _cell(m, "text_alignment") if m.get("text_alignment_parts") else "–"
            runs_on = m.get("seeds", seeds)
            label = f"{name} ({len(runs_on)} seeds)" if len(seeds) > 1 and len(runs_on) > 1 else name
            kept = f"{m['expert_kept_share']:.0%}" if "expert_kept_share" in m else "–"
            drifts = " | ".join(_cell(m, k) for k in ("class_drift", "class_drift_unseen", "class_drift_other"))
            lines.append(f"| {label} | {_cell(m, 'image_alignment')} | {_cell(m, 'image_alignment_train')} | {ta} | "
                         f"{_cell(m, 'forgetting')} | {drifts} | "
                         f"{kept} | {m['params_added']:,} | {m['bytes_added'] / 1024:.0f} KB | "
                         f"{m['train_s_per_task']:.1f} | "
                         f"{m['sample_s_per_image']:.3f} |")
        base = data["base_model"]
        lines += ["", f"Base model (class word, nothing learned): IA held-out {base['image_alignment']:.1f}, against "
                  f"the training photos {base['image_alignment_train']:.1f}. References per concept: "
                  f"{data['references']['train_images'][0]} training photos, "
                  f"{data['references']['heldout_images'][0]} held out.", "",
                  "Training loss by quarter of each task's steps (mean over tasks and seeds): "
                  + "; ".join(f"{name} " + " / ".join(f"{v:.3f}" for v in m["loss_by_quarter"])
                              for name, m in data["methods"].items() if m.get("loss_by_quarter")) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--concepts", type=Path, default=HERE / "world" / "concepts_10.json")
    parser.add_argument("--heldout-concepts", type=Path, default=HERE / "world" / "concepts_heldout_8.json",
                        help="a concept set no default was chosen on, run as a track of its own ('' skips it; "
                             "--quick skips it)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS,
                        help="folder of photo concept folders (the real-photo track runs when it exists)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0", help="seeds every method runs on")
    parser.add_argument("--spread-seeds", default="1,2",
                        help="more seeds on both tracks for --spread-methods only (the 3-seed spread of the "
                             "comparisons the goals name, at a third of the cost of every method on every seed)")
    parser.add_argument("--spread-methods",
                        default="r2moe,r2moe_hlag,textual_inversion,lora_sequential,c_lora,lora_per_concept")
    parser.add_argument("--photo-seeds", default=None,
                        help="seeds every method runs on in the real-photo track (default: the same as --seeds)")
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps per task")
    parser.add_argument("--images", type=int, default=5, help="reference images per world concept (3-7)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N concepts")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes running (method, seed) jobs side by side, one thread each")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute every job (by default finished (method, seed) jobs are kept in OUT/.cache)")
    parser.add_argument("--quick", action="store_true", help="3 concepts, 10 steps, 1 seed, 2 images each")
    parser.add_argument("--tracks", default=",".join(TRACKS),
                        help="tracks to run now; the others are kept from OUT/lifelong.json when it holds them, "
                             "made with the same settings (each track records the code that made it)")
    opts = parser.parse_args()
    budget, settings = replace(Budget(), steps=opts.steps), EvalSettings()
    seeds = [int(s) for s in opts.seeds.split(",")]
    photo_seeds = [int(s) for s in opts.photo_seeds.split(",")] if opts.photo_seeds else seeds
    spread_seeds = [int(s) for s in opts.spread_seeds.split(",") if s.strip()]
    extra = {m.strip(): spread_seeds for m in opts.spread_methods.split(",") if m.strip()}
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    heldout = opts.heldout_concepts if str(opts.heldout_concepts) not in ("", ".") and not opts.quick else None
    if heldout is not None and not heldout.is_file():
        parser.error(f"--heldout-concepts {heldout} does not exist; give a concept JSON file or '' to skip the track")
    evaluator_settings = BENCH_EVALUATOR
    if opts.quick:
        budget, seeds, opts.limit = replace(budget, steps=10), seeds[:1], 3
        photo_seeds, extra = seeds, {}
        settings = EvalSettings(images_per_concept=2, steps=6, contexts=2)
        evaluator_settings = QUICK_BENCH_EVALUATOR
    running = [t.strip() for t in opts.tracks.split(",") if t.strip()]
    if not running or set(running) - set(TRACKS):
        parser.error(f"--tracks takes some of {', '.join(TRACKS)}, comma-separated; got {opts.tracks!r}")
    started = time.perf_counter()
    name = "lifelong_quick" if opts.quick else "lifelong"
    results = {
        "provenance": provenance(Path(__file__)),
        "settings": {"seeds": seeds, "photo_seeds": photo_seeds, "spread_seeds": {m: spread_seeds for m in extra},
                     "budget": budget.__dict__, "eval": settings.__dict__, "checkpoint": opts.checkpoint.name,
                     "concepts": opts.concepts.name,
                     "heldout_concepts": heldout.name if heldout else None},
        "simplifications": {m: SIMPLIFICATIONS[m] for m in methods},
        "tracks": {},
    }
    kept = kept_tracks(opts.out / f"{name}.json", running, results["settings"])  # checked before any work
    cache = None if opts.no_cache else opts.out / ".cache"
    evaluator, report = world_evaluator(cache, evaluator_settings)
    LOG.info("world evaluator held-out accuracy: %s", {k: round(v, 3) for k, v in report.accuracy.items()})
    results["evaluator_accuracy"] = {k: round(v, 3) for k, v in report.accuracy.items()}
    opts.out.mkdir(parents=True, exist_ok=True)
    init = (opts.checkpoint, evaluator.state_dict(), 1 if opts.workers > 1 else torch.get_num_threads())
    _worker_init(*init)  # the parent scores references and the base model too
    context = multiprocessing.get_context("spawn")
    with context.Pool(opts.workers, initializer=_worker_init, initargs=init) as pool:
        def track(label: str, concepts: list[ConceptData], track_seeds: list[int]) -> None:
            results["tracks"][label] = run_track(label, concepts, methods, track_seeds, budget, settings, pool,
                                                 opts.out, cache, extra) | {"provenance": results["provenance"]}

        if "world" in running:
            track("world", world_concepts(opts.concepts, opts.images, opts.limit), seeds)
        if heldout and "heldout" in running:
            track("heldout", world_concepts(heldout, opts.images, None), seeds)
        if "photo" in running and opts.photos.is_dir():
            track("photo", photo_concepts(opts.photos, opts.limit), photo_seeds)
        elif "photo" in running:
            LOG.info("no photo folder at %s: the real-photo track is skipped", opts.photos)
    merged = results["tracks"] | kept
    results["tracks"] = {t: merged[t] for t in TRACKS if t in merged}
    if "world" in results["tracks"]:
        results["methods"] = results["tracks"]["world"]["methods"]  # the shape other tools read
    results["seconds"] = round(time.perf_counter() - started, 1)
    (opts.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (opts.out / f"{name}.md").write_text(markdown(results) + "\n")
    LOG.info("%s", markdown(results))
    LOG.info("written %s and %s in %.0f s", opts.out / f"{name}.json", opts.out / f"{name}.md", results["seconds"])


if __name__ == "__main__":
    main()
