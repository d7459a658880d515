from __future__ import annotations

import r2moe_core as core
from r2moe_testkit.small import small_layers, weights_for


def test_same_model_in_half_precision_matches():
    layers = small_layers()
    weights = weights_for(layers)
    fp32 = core.compute_fingerprint(layers, weights)
    for dtype in ("float16", "bfloat16"):
        import torch

        cast = {k: v.to(getattr(torch, dtype)) for k, v in weights.items()}
        assert core.fingerprint_differences(fp32, core.compute_fingerprint(layers, cast), layers) == []


def test_other_weights_are_detected_and_named():
    layers = small_layers()
    weights = weights_for(layers)
    changed = dict(weights)
    key = f"{layers[1].name}.to_v"
    changed[key] = weights[key] * 1.1
    diff = core.fingerprint_differences(
        core.compute_fingerprint(layers, weights), core.compute_fingerprint(layers, changed), layers
    )
    assert diff == [key]
    other = core.compute_fingerprint(layers, weights_for(layers, seed=5))
    assert len(core.fingerprint_differences(core.compute_fingerprint(layers, weights), other, layers)) == 6
