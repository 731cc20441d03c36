"""Pictures: image grids (Pillow, exact pixels) and plots (matplotlib, headless)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile images (N, C, H, W) or (N, H, W) with values in [0, 1] into one PIL image, `nrow` per row."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 2:  # flat vectors: show as a square if possible
        side = math.isqrt(x.shape[1])
        x = x.view(-1, 1, side, side) if side * side == x.shape[1] else x.view(-1, 1, 1, x.shape[1])
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = x[i].permute(1, 2, 0).numpy()
    arr = (canvas * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr[..., :3], mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, nrow, scale=scale).save(path)
    return path
