"""The training memory estimate: never below a measured peak, scaled by model and request, refusals that say
which setting to lower."""

from __future__ import annotations

import pytest

from r2moe_core.errors import InvalidInputError
from r2moe_core.train.memory_estimate import GIB, REFERENCES, TrainingFootprint, check_memory

SD15 = {"family": "sd1", "unet_bytes": REFERENCES["sd1"].unet_bytes, "channels": 320, "element_bytes": 2,
        "resolution": 512}
SDXL = {"family": "sdxl", "unet_bytes": REFERENCES["sdxl"].unet_bytes, "channels": 320, "element_bytes": 2,
        "resolution": 1024}


@pytest.mark.parametrize("model", [SD15, SDXL], ids=["sd15", "sdxl"])
def test_the_estimate_is_never_below_a_measured_peak(model):
    for checkpointing, peaks in REFERENCES[model["family"]].peaks.items():
        for batch, peak in peaks.items():
            estimate = TrainingFootprint(**model, batch=batch, checkpointing=checkpointing).peak_bytes()
            assert peak <= estimate <= peak + 3.5 * GIB, (checkpointing, batch, estimate / GIB, peak / GIB)


def test_the_estimate_grows_with_batch_resolution_width_and_precision():
    base = TrainingFootprint(**SD15, batch=2, checkpointing=True)
    bigger = [TrainingFootprint(**(SD15 | change), batch=batch, checkpointing=True).peak_bytes()
              for change, batch in (({}, 4), ({"resolution": 768}, 2), ({"channels": 640}, 2),
                                    ({"element_bytes": 4}, 2), ({"unet_bytes": 2 * SD15["unet_bytes"]}, 2))]
    assert all(b > base.peak_bytes() for b in bigger)
    without = TrainingFootprint(**SD15, batch=2, checkpointing=False)
    assert without.peak_bytes() > base.peak_bytes()
    # SD 2.x has no figures of its own: SD1.x's, scaled to its resolution
    sd2 = TrainingFootprint(**(SD15 | {"family": "sd2", "resolution": 768}), batch=2, checkpointing=True)
    assert sd2.peak_bytes() == TrainingFootprint(**(SD15 | {"resolution": 768}), batch=2,
                                                 checkpointing=True).peak_bytes()


def test_a_run_that_fits_passes_and_one_that_does_not_names_the_setting_to_lower():
    footprint = TrainingFootprint(**SD15, batch=2, checkpointing=False)
    need = footprint.peak_bytes()
    assert check_memory(footprint, need, "cuda:0") == need
    on = TrainingFootprint(**SD15, batch=2, checkpointing=True).peak_bytes()
    with pytest.raises(InvalidInputError, match="Turn gradient_checkpointing on"):
        check_memory(footprint, on, "cuda:0")
    big = TrainingFootprint(**SD15, batch=16, checkpointing=True)
    with pytest.raises(InvalidInputError, match=r"about 1\d\.\d GiB on cuda:0 .*batch_size 16.*Lower batch_size to "
                                                r"(\d+) or less"):
        check_memory(big, 10 * GIB, "cuda:0")
    with pytest.raises(InvalidInputError, match="batch_size 1 and resolution 384 or less"):
        check_memory(TrainingFootprint(**SD15, batch=1, checkpointing=True), 5.48 * GIB, "cuda:0")
    with pytest.raises(InvalidInputError, match="device with more memory"):
        check_memory(TrainingFootprint(**SD15, batch=1, checkpointing=True), 1 * GIB, "cuda:0")
