"""The course's models, one file per paper (chapter 02 onwards), and one baseline:
`question_only`, the question-only VQA model every VQA model must beat (chapter 03 on).

A model file holds its model and the paper's own losses and step functions. Data pipelines live
in `minivlm/data/`, evaluation in `minivlm/eval/`, losses another chapter reuses in
`minivlm/losses.py`, shared layers and heads in `minivlm/nn/`, training drivers in
`minivlm/drivers.py`. A model file imports another model file only when its model is built from
that one. These are all such imports (tests/test_layout.py checks the list against the code):

    blip -> albef       BLIP's pretrainer extends ALBEF's (momentum model, queues)
    blip_hf -> blip     transformers' BLIP loaded into ours
    beit3 -> vlmo       BEiT-3 is VLMo's Multiway Transformer with masked data modelling
    frozen -> clip      the prefix model composes the zoo CLIP ...
    frozen -> gpt       ... and the frozen language model
    flamingo -> clip    Flamingo joins the zoo CLIP's image tower ...
    flamingo -> gpt     ... and the frozen language model through gated cross-attention
    flamingo -> frozen  chapter 10's prefix model, the k-shot control (and its splice)
"""
from minivlm.models.clip import CLIP, CLIPConfig  # noqa: F401
from minivlm.models.vilt import ViLT, ViLTConfig  # noqa: F401
