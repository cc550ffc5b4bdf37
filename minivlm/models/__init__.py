"""The course's models, one file per paper (chapter 02 onwards)."""
from minivlm.models.clip import CLIP, CLIPConfig  # noqa: F401
from minivlm.models.vilt import ViLT, ViLTConfig  # noqa: F401
