"""The model zoo: pretrained components that later chapters start from (chapter 02 builds "clip",
chapter 03 "vilt_pretrained" and "vilt", chapter 04 "albef", chapter 05 "vlmo", chapter 06 "blip", chapter 07 "coca",
chapter 08 "beit3_tokenizer" and "beit3", chapter 09 "llm", chapter 10 "clipcap", "mapl" and "clipcap_kl", chapter 11
"flamingo").

Nothing is downloaded: the weights ship inside the package (`minivlm/zoo/weights/`, safetensors)
next to a JSON manifest with their sha256, the config, the recipe and the metrics they reached on
ShapesBench. `build(name)` (the command `minivlm zoo build clip`) retrains them with a seeded
recipe on the CPU, so anyone can check that the shipped file is what the recipe makes.

    from minivlm import zoo
    clip = zoo.load("clip")           # the trained chapter-02 CLIP, in eval mode
    vision_tower = clip.visual        # the frozen image encoder of BLIP-2, LLaVA ... (chapters 12+)
    vilt = zoo.load("vilt")           # chapter 03's ViLT, MLM + ITM pretrained, then VQA fine-tuned

Each entry's recipe (how it is trained and evaluated) lives in `minivlm/zoo/recipes/`; this
module is only the registry: load, build, manifest.
"""
from minivlm.zoo.recipes.albef import AlbefRecipe
from minivlm.zoo.recipes.beit3 import Beit3Recipe, Beit3TokenizerRecipe
from minivlm.zoo.recipes.blip import BlipRecipe
from minivlm.zoo.recipes.clip import ClipRecipe, evaluate_clip
from minivlm.zoo.recipes.clipcap import ClipCapKLRecipe, ClipCapRecipe, MaplRecipe
from minivlm.zoo.recipes.coca import CocaRecipe
from minivlm.zoo.recipes.flamingo import FlamingoRecipe
from minivlm.zoo.recipes.llm import LlmRecipe
from minivlm.zoo.recipes.vilt import ViltPretrainedRecipe, ViltRecipe
from minivlm.zoo.recipes.vlmo import VlmoRecipe
from minivlm.zoo.store import (
    CONFIG_METADATA_KEY,
    RECIPES,
    WEIGHTS_DIR,
    available,
    build,
    load,
    manifest,
    save_weights,
    sha256,
    stored_state,
)

# The registry, in build order: an entry may load an earlier one ("vilt" fine-tunes "vilt_pretrained").
RECIPES.update({recipe.name: recipe for recipe in (ClipRecipe, ViltPretrainedRecipe, ViltRecipe, AlbefRecipe, VlmoRecipe,
                                             BlipRecipe, CocaRecipe, Beit3TokenizerRecipe, Beit3Recipe, LlmRecipe,
                                             ClipCapRecipe, MaplRecipe, ClipCapKLRecipe, FlamingoRecipe)})

__all__ = ["CONFIG_METADATA_KEY", "ClipRecipe", "RECIPES", "WEIGHTS_DIR", "available", "build", "evaluate_clip", "load",
           "manifest", "save_weights", "sha256", "stored_state"]
