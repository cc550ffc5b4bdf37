"""Data (chapter 00): ShapesWorld, the word tokenizer and the ShapesBench evaluation sets."""
from minivlm.data.bench import ShapesBench  # noqa: F401
from minivlm.data.shapesworld import (  # noqa: F401
    COLORS,
    HELDOUT_COMPOSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    ShapesWorld,
    time_render,
)
from minivlm.data.tokenizer import Tokenizer  # noqa: F401
