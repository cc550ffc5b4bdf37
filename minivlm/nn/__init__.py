"""Building blocks (chapter 01): attention, masks, the pre-LN block, ViT, text Transformer; the
Llama layout's RMSNorm, gated MLP and rotary positions (chapter 09)."""
from minivlm.nn import masks  # noqa: F401
from minivlm.nn.attention import MultiHeadAttention, scaled_dot_product_attention  # noqa: F401
from minivlm.nn.blocks import MLP, Block, GatedMLP, RMSNorm, Transformer, quick_gelu  # noqa: F401
from minivlm.nn.rope import RotaryEmbedding, apply_rotary  # noqa: F401
from minivlm.nn.text import TextTransformer  # noqa: F401
from minivlm.nn.vit import PatchEmbed, ViT, patchify, unpatchify  # noqa: F401
