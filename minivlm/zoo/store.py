"""The zoo's store: the weights folder, manifests, loading and building (chapter 02 introduces
the zoo). `load(name)` builds the architecture its recipe names (`RECIPES[name].model(config)`)
and fills it with the shipped weights; `build(name)` retrains an entry with its seeded recipe.
The registry `RECIPES` is filled by `minivlm.zoo`, which imports every recipe; the recipes import
this module, never the registry, to load the entries they start from.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minivlm.data.tokenizer import Tokenizer
from minivlm.utils import check_device, count_parameters, state_dict_mismatches

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# The registry, name -> recipe class, in build order: an entry may load an earlier one ("vilt"
# fine-tunes "vilt_pretrained"). `minivlm.zoo` fills it with the recipes of minivlm/zoo/recipes/,
# which load their frozen parts through this module (so no recipe imports the registry).
RECIPES: dict[str, type] = {}

def available() -> list[str]:
    """The names `load` and `build` accept, in build order."""
    return list(RECIPES)


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(available())}")
    return name


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The folder of the `load(name, weights_dir=...)` in progress: a model built on other entries
# (chapter 10's prefix joins the zoo's clip and llm) loads them, and reads their manifests, from
# the same folder, not from the package's.
_LOADING_FROM: ContextVar[Path | None] = ContextVar("minivlm_zoo_loading_from", default=None)


def _paths(name: str, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    d = Path(out_dir) if out_dir is not None else _LOADING_FROM.get() or WEIGHTS_DIR
    return d / f"{name}.safetensors", d / f"{name}.json"


def _rebuild(name: str, folder: Path) -> str:
    """How to (re)build `name` into `folder`: the CLI writes only the package's folder."""
    if folder.resolve() == WEIGHTS_DIR:
        return f"run `minivlm zoo build {name}`"
    return f"build it there with `minivlm.zoo.build({name!r}, out_dir={str(folder)!r})`"


def manifest(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON manifest of a zoo model: sha256, config, recipe, metrics, torch version, seconds."""
    name = _check_name(name)
    path = _paths(name, weights_dir)[1]
    if not path.is_file():
        raise FileNotFoundError(f"no manifest for {name!r} at {path}: {_rebuild(name, path.parent)}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # a truncated or garbled file
        raise ValueError(f"manifest {path} is not valid JSON ({exc}); expected the JSON object `minivlm zoo "
                         f"build {name}` writes: run it again") from None


def load(name: str, weights_dir: str | Path | None = None, device: str | torch.device | None = "cpu") -> nn.Module:
    """The pretrained model `name`, in eval mode, after checking its files against each other.

    weights_dir: the folder holding `<name>.safetensors` and `<name>.json` (default: the package's);
    the entries a model is built on (clipcap's clip and llm) are loaded from the same folder.
    device: a torch.device or a string such as "cpu" or "cuda".

    Verified, each failure a ValueError naming the file and what differs:
      - the weights file's sha256 and size equal the manifest's `sha256` and `bytes`;
      - the manifest's `name` and `file` are this entry's (a manifest copied from another entry);
      - its `config` builds a valid model (no unknown field, every value in range) whose state
        dict fits the weights key by key and shape by shape, with the manifest's `parameters`;
      - the config's tokenizer fields (vocab_size, eos_id, pad_id, mask_id) and
        `tokenizer_vocab_size` are those of the course tokenizer the model will read text with;
      - the config agrees with the fields the recipe set (`recipe.config`), and with the config
        the build stored inside the weights file (safetensors metadata, covered by the sha256), so
        an edit to a field that changes no weight's shape (eps, act, heads, image_mean/std ...)
        is refused too.
    Not verified: an edit to `metrics`, `arms`, `final_loss`, `seconds` or `torch_version`. Only
    `minivlm zoo build <name>` reproduces those.
    """
    name = _check_name(name)
    device = check_device("device", device)
    if weights_dir is None:
        return _load(name, device)
    token = _LOADING_FROM.set(Path(weights_dir))  # the entries it joins come from weights_dir too
    try:
        return _load(name, device)
    finally:
        _LOADING_FROM.reset(token)


def _load(name: str, device: torch.device | None) -> nn.Module:
    weights, manifest_path = _paths(name)
    info = manifest(name)
    rebuild = _rebuild(name, weights.parent)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights for {name!r} at {weights}: {rebuild}")
    if not isinstance(info, dict):
        raise ValueError(f"manifest {manifest_path} must hold a JSON object, got {type(info).__name__}; {rebuild}")
    for key in ("sha256", "config"):
        if key not in info:
            raise ValueError(f"manifest {manifest_path} has no {key!r} key (expected keys include 'sha256' and "
                             f"'config', got {sorted(info)}); {rebuild}")
    digest = sha256(weights)
    if digest != info["sha256"]:
        raise ValueError(f"{weights} is corrupt or stale: its sha256 is {digest}, the manifest says {info['sha256']}; "
                         f"{rebuild}")
    # The weights are the manifest's; now the manifest's other fields against the entry, the file
    # and the model its config builds.
    for key, want in (("name", name), ("file", weights.name)):
        if key in info and info[key] != want:
            raise ValueError(f"manifest {manifest_path}: {key!r} is {info[key]!r}, expected {want!r} for the "
                             f"{name!r} entry; {rebuild}")
    config = info["config"]
    if not isinstance(config, dict):
        raise ValueError(f"manifest {manifest_path}: 'config' must be a JSON object, got {type(config).__name__}; "
                         f"{rebuild}")
    recipe = info.get("recipe")
    recipe_config = recipe.get("config") if isinstance(recipe, dict) else None
    for key, value in (recipe_config.items() if isinstance(recipe_config, dict) else ()):
        if key in config and config[key] != value:
            raise ValueError(f"manifest {manifest_path}: config key {key!r} is {config[key]!r}, but the recipe "
                             f"trained with {value!r}; {rebuild}")
    _check_tokenizer_fields(manifest_path, info, rebuild)
    try:
        model = RECIPES[name].model(config)
    except (TypeError, ValueError) as e:  # an unknown or out-of-range config field
        raise ValueError(f"manifest {manifest_path}: its 'config' does not build a {name!r} model: {e}; "
                         f"{rebuild}") from None
    state = load_file(str(weights))
    problems = state_dict_mismatches(stored_state(model), state)
    if problems:
        raise ValueError(f"{weights} does not fit the {name!r} model built from its manifest's config "
                         f"({len(problems)} mismatch(es), first: {problems[0]}); {rebuild}")
    # fields that change no weight's shape (eps, act, heads ...): against the config saved in the file
    stored = _stored_config(weights)
    if stored is not None:
        for key in sorted(set(stored) | set(config)):
            if stored.get(key, "<absent>") != config.get(key, "<absent>"):
                raise ValueError(f"manifest {manifest_path}: config key {key!r} is {config.get(key, '<absent>')!r}, "
                                 f"but the weights were trained and saved with {stored.get(key, '<absent>')!r}; "
                                 f"{rebuild}")
    for key, want, what in (("bytes", weights.stat().st_size, "the weights file has"),
                            ("parameters", count_parameters(model), "the model its config builds has")):
        if key in info and info[key] != want:
            raise ValueError(f"manifest {manifest_path}: {key!r} is {info[key]!r}, {what} {want}; {rebuild}")
    # a model on other zoo entries holds their (already loaded) weights: load only its own part
    model.load_state_dict(state, strict=not hasattr(model, "stored_state_dict"))
    return model.to(device).eval()


def stored_state(model: nn.Module) -> dict:
    """What a zoo weights file holds: the whole state dict, or, for a model built on other zoo
    entries (chapter 10's prefix on the frozen clip and llm), only its own part
    (`model.stored_state_dict()`)."""
    fn = getattr(model, "stored_state_dict", None)
    return model.state_dict() if fn is None else fn()


CONFIG_METADATA_KEY = "minivlm_config"  # the config as JSON, in the weights file's safetensors metadata


def _stored_config(weights: Path) -> dict | None:
    """The config the build wrote into the weights file, or None for a file without one."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
    try:
        return None if text is None else json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{weights}: its stored config ({CONFIG_METADATA_KEY!r} metadata) is not valid JSON "
                         f"({exc})") from None


def save_weights(model: nn.Module, path: str | Path, config: dict) -> None:
    """The model's state dict as safetensors, with `config` (JSON) in the file's metadata."""
    # contiguous copies: safetensors refuses views that share memory (tied weights)
    save_file({k: v.detach().contiguous().clone() for k, v in stored_state(model).items()}, str(path),
              metadata={CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)})


def _check_tokenizer_fields(manifest_path: Path, info: dict, rebuild: str) -> None:
    """Every zoo model reads text with the course tokenizer: ids edited in the manifest (or a
    tokenizer that changed since the build) would embed the wrong tokens without an error."""

    tok = Tokenizer.from_world()
    config = info["config"]
    expected = {("config", "vocab_size"): len(tok), ("config", "eos_id"): tok.eos_id,
                ("config", "pad_id"): tok.pad_id, ("config", "mask_id"): tok.mask_id,
                ("manifest", "tokenizer_vocab_size"): len(tok)}
    for (where, key), want in expected.items():
        fields = config if where == "config" else info
        if key in fields and fields[key] != want:
            field = f"config key {key!r}" if where == "config" else repr(key)
            raise ValueError(f"manifest {manifest_path}: {field} is {fields[key]!r}, but the course tokenizer "
                             f"has {want}; {rebuild}")


# ----------------------------------------------------------------------------- building


def build(name: str, out_dir: str | Path | None = None, progress: bool = True, **recipe_overrides) -> dict:
    """Retrain zoo model `name` with its seeded CPU recipe; write `<name>.safetensors` and
    `<name>.json` to `out_dir` (default: the package's weights folder); return the manifest.

    recipe_overrides change fields of the recipe (e.g. steps=50 for a quick test build); the
    manifest records the recipe actually used.
    """
    name = _check_name(name)
    recipe = RECIPES[name](**recipe_overrides)
    weights, manifest_path = _paths(name, out_dir)
    out_dir = weights.parent
    weights.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread: float sums then run in one fixed order, so a rebuild gives the same bits on any
    # machine; on a busy 2-core machine it is also faster than two threads waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, info = recipe.train(out_dir, progress)
    finally:
        torch.set_num_threads(threads)
    save_weights(model, weights, info["config"])
    info["parameters"] = count_parameters(model)
    info = {
        "name": name,
        "file": weights.name,
        "sha256": sha256(weights),
        "bytes": weights.stat().st_size,
        **info,
        "recipe": asdict(recipe),
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    manifest_path.write_text(json.dumps(info, indent=2) + "\n")
    return info
