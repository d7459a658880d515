"""The peak device memory of a training run, estimated from peaks measured on a GPU, so that a run that cannot
fit is refused before step 1 with the setting to lower, instead of running out of memory mid-run.

The reference figures are `torch.cuda.max_memory_allocated` of R2MoETrainConcept runs on full-size fp16 UNets
(the device check, NVIDIA H200, rank 4). A peak is taken as a line in the batch, fixed + batch x per item, drawn
as an upper envelope: the slope of the two largest batches measured, the intercept raised until no measurement
lies above the line. With one batch measured (SDXL) everything but the UNet's weights is counted per item.
Other models scale from the nearest reference: the fixed part with the UNet's weight bytes (the weights and the
copies training reads them through), the per-item part with the base channel count, the latent cells and the
bytes per element of the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidInputError

GIB = 1024**3


@dataclass(frozen=True)
class MeasuredPeaks:
    """Peaks of one reference UNet at one resolution: batch -> bytes, with gradient checkpointing off and on."""

    unet_bytes: float  # its weights, fp16
    channels: int  # its base channel count
    latent_cells: int  # latent height x width at the measured resolution
    peaks: dict[bool, dict[int, float]]  # checkpointing -> batch -> peak bytes

    def line(self, checkpointing: bool) -> tuple[float, float]:
        """(fixed, per item) bytes of the upper envelope."""
        points = sorted(self.peaks[checkpointing].items())
        if len(points) == 1:
            (batch, peak), = points
            per_item = (peak - self.unet_bytes) / batch
        else:
            (b1, p1), (b2, p2) = points[-2:]
            per_item = (p2 - p1) / (b2 - b1)
        return max(peak - batch * per_item for batch, peak in points), per_item


# Gradient checkpointing on, one-step runs at batch 4, 5 and 11 peaked on the line of the runs without it (the
# batch-4 peaks are equal to the byte): the envelope keeps those measurements, so "on" is not assumed to save more.
REFERENCES = {
    "sd1": MeasuredPeaks(
        unet_bytes=1.719e9, channels=320, latent_cells=64 * 64,
        peaks={False: {2: 7466236416, 4: 8498294784, 10: 12.27 * GIB, 34: 29.57 * GIB},
               True: {2: 4162570240, 4: 8498294784, 5: 8.63 * GIB, 11: 13.0 * GIB}}),
    "sdxl": MeasuredPeaks(
        unet_bytes=5.135e9, channels=320, latent_cells=128 * 128,
        peaks={False: {1: 26803032576}, True: {1: 12442767872}}),
}


@dataclass(frozen=True)
class TrainingFootprint:
    """What a run's peak depends on, read off the model and the request."""

    family: str  # the bank's model family; families without figures use SD1.x's, scaled
    unet_bytes: float  # the UNet's weights as loaded
    channels: int
    element_bytes: int  # bytes per element of the dtype the UNet computes in
    resolution: int  # training pixels per side
    batch: int
    checkpointing: bool

    def peak_bytes(self) -> float:
        reference = REFERENCES.get(self.family, REFERENCES["sd1"])
        fixed, per_item = reference.line(self.checkpointing)
        cells = (self.resolution // 8) ** 2
        item_scale = (self.channels / reference.channels) * (cells / reference.latent_cells) * self.element_bytes / 2
        return fixed * self.unet_bytes / reference.unet_bytes + self.batch * per_item * item_scale


def check_memory(footprint: TrainingFootprint, available: float, where: str) -> float:
    """The estimated peak, or InvalidInputError naming the setting to lower when it exceeds `available` bytes."""
    need = footprint.peak_bytes()
    if need <= available:
        return need
    fits = _what_fits(footprint, available)
    raise InvalidInputError(
        f"Training would need about {need / GIB:.1f} GiB on {where} (batch_size {footprint.batch}, resolution "
        f"{footprint.resolution}, gradient_checkpointing {'on' if footprint.checkpointing else 'off'}); about "
        f"{available / GIB:.1f} GiB is free there. {fits} Nothing was trained."
    )


def _what_fits(footprint: TrainingFootprint, available: float) -> str:
    def fits(**change: object) -> bool:
        return replace(footprint, **change).peak_bytes() <= available

    if not footprint.checkpointing and fits(checkpointing=True):
        return "Turn gradient_checkpointing on."
    batch = footprint.batch - 1
    while batch >= 1 and not fits(batch=batch):
        batch -= 1
    if batch >= 1:
        return f"Lower batch_size to {batch} or less."
    resolution = footprint.resolution - 64
    while resolution >= 256 and not fits(batch=1, resolution=resolution):
        resolution -= 64
    if resolution >= 256:
        return f"Use batch_size 1 and resolution {resolution} or less."
    return "Free memory on it (close other programs that use it) or train on a device with more memory."
