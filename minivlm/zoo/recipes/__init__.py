"""One module per zoo entry: how it is trained (a seeded CPU recipe), evaluated and rebuilt.

Each module defines a recipe dataclass with
    name, model(config: dict) -> nn.Module   the architecture the weights load into
    train(weights_dir, progress) -> (model, manifest fields)
and the registry in `minivlm.zoo` lists the recipes in build order (an entry may load an
earlier one: "vilt" fine-tunes "vilt_pretrained").
"""
