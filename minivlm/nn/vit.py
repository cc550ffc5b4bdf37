"""Vision Transformer: cut the image into patches, embed them, add a CLS token and learned
positions, run a Transformer (chapter 01; the image tower of CLIP in chapter 02).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from minivlm.nn.blocks import Transformer
from minivlm.utils import check_dtype, check_int, check_shape, check_tensor


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, P·P·C), patches in row-major order, each flattened (p1, p2, c)."""
    check_tensor("images", images, ndim=4)
    check_int("patch_size", patch_size)
    _, _, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} must be divisible by patch_size={patch_size}")
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify` for square images: (B, N, P·P·C) → (B, C, H, W)."""
    check_tensor("patches", patches, ndim=3)
    check_int("patch_size", patch_size)
    check_int("channels", channels)
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"number of patches must be a square, got {patches.shape[1]}")
    if patches.shape[2] != patch_size * patch_size * channels:
        raise ValueError(f"patch dim must be {patch_size}*{patch_size}*{channels}, got {patches.shape[2]}")
    return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=side, p1=patch_size, p2=patch_size)


class PatchEmbed(nn.Module):
    """Linear projection of flattened patches (the same as a conv with stride = kernel = P)."""

    def __init__(self, patch_size: int, channels: int, dim: int, bias: bool = True):
        super().__init__()
        for name, value in (("patch_size", patch_size), ("channels", channels), ("dim", dim)):
            check_int(name, value)
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * channels, dim, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N, D)."""
        check_tensor("images", images, ndim=4, dtype="float")
        check_dtype("images", images, self.proj.weight.dtype)
        return self.proj(patchify(images, self.patch_size))


class ViT(nn.Module):
    """ViT with a CLS token. `forward` returns the pooled feature (B, dim), or class logits
    (B, num_classes) when `num_classes` is set; `forward_features` returns all tokens.

    pool: "cls" (the CLS token) or "mean" (mean of the patch tokens).
    pre_norm: a LayerNorm before the Transformer, as in CLIP's image tower.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        channels: int = 3,
        num_classes: int | None = None,
        pool: str = "cls",
        dropout: float = 0.0,
        act: str = "gelu",
        pre_norm: bool = False,
        patch_bias: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("dim", dim), ("depth", depth),
                            ("heads", heads), ("channels", channels)):
            check_int(name, value)
        if num_classes is not None:
            check_int("num_classes", num_classes)
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.image_size, self.patch_size, self.channels, self.pool = image_size, patch_size, channels, pool
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, channels, dim, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_patches + 1, dim) * 0.02)
        self.norm_pre = nn.LayerNorm(dim, eps=eps) if pre_norm else nn.Identity()
        self.transformer = Transformer(dim, depth, heads, mlp_ratio=mlp_ratio, dropout=dropout, act=act, eps=eps)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes) if num_classes is not None else None

    def check_images(self, images: torch.Tensor) -> None:
        check_tensor("images", images, ndim=4, dtype="float")
        s = self.image_size
        check_shape("images", images, [None, self.channels, s, s])
        check_dtype("images", images, self.patch_embed.proj.weight.dtype)

    def forward_features(self, images: torch.Tensor, need_weights: bool = False, norm: bool = True) -> torch.Tensor:
        """(B, C, H, W) → (B, 1 + N, dim): the CLS token followed by the patch tokens.

        norm=False skips the final LayerNorm, for a caller that normalises only the tokens it
        keeps (CLIP normalises just the CLS token)."""
        self.check_images(images)
        x = self.patch_embed(images)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding  # (B, 1 + N, D)
        x = self.transformer(self.norm_pre(x), need_weights=need_weights)
        return self.norm(x) if norm else x

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(self.forward_features(images))  # (B, D)
        return self.head(pooled) if self.head is not None else pooled
