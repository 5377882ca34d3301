"""Image crops for observation encoders: random in training, centered otherwise.

Fixes two things in Diffusion Policy: its `MultiImageObsEncoder` applied no crop at all when
`random_crop=False` (the CenterCrop was assigned to a variable then overwritten), and robomimic's
random crop samples offsets in `[0, H - h)`, so it never touches the bottom or right edge; here
every offset in `[0, H - h]` is possible.
"""


import torch
from torch import nn


def center_crop_offsets(size: tuple[int, int], crop_shape: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the centered crop, rounded like torchvision's `center_crop`."""
    (H, W), (h, w) = size, crop_shape
    return round((H - h) / 2.0), round((W - w) / 2.0)


def center_crop(images: torch.Tensor, crop_shape: tuple[int, int]) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, C, h, w)`, the same centered window for every image."""
    h, w = crop_shape
    top, left = center_crop_offsets(images.shape[-2:], crop_shape)
    return images[..., top: top + h, left: left + w]


def random_crop(images: torch.Tensor, crop_shape: tuple[int, int],
                generator: torch.Generator | None = None) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, C, h, w)`, an independent uniformly placed window per image."""
    B, _, H, W = images.shape
    h, w = crop_shape
    device = images.device
    top = torch.randint(0, H - h + 1, (B,), generator=generator, device=device)
    left = torch.randint(0, W - w + 1, (B,), generator=generator, device=device)
    rows = (top[:, None] + torch.arange(h, device=device))[:, :, None]  # (B, h, 1)
    cols = (left[:, None] + torch.arange(w, device=device))[:, None, :]  # (B, 1, w)
    batch = torch.arange(B, device=device)[:, None, None]
    # Advanced indices around the channel slice put their dims first: (B, h, w, C).
    return images[batch, :, rows, cols].permute(0, 3, 1, 2)


class ImageCrop(nn.Module):
    """Crops `(B, C, H, W)` images to `(B, C, *crop_shape)`.

    In training mode with `random_crop` the window is random per image; in eval mode, or with
    `random_crop=False`, it is always the center crop, so train and eval see the same scale.
    """

    def __init__(self, input_shape: tuple[int, int], crop_shape: tuple[int, int],
                 random_crop: bool = True):
        super().__init__()
        if crop_shape[0] > input_shape[0] or crop_shape[1] > input_shape[1]:
            raise ValueError(
                f"crop {tuple(crop_shape)} is larger than the image {tuple(input_shape)}"
            )
        self.input_shape = tuple(input_shape)
        self.crop_shape = tuple(crop_shape)
        self.random_crop = random_crop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and self.random_crop:
            return random_crop(images, self.crop_shape)
        return center_crop(images, self.crop_shape)

    def extra_repr(self) -> str:
        return (f"input_shape={self.input_shape}, crop_shape={self.crop_shape}, "
                f"random_crop={self.random_crop}")
