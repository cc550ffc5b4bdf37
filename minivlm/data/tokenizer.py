"""A word-level tokenizer with the course's fixed vocabulary (chapter 00).

Why word-level: ShapesWorld's language is a few hundred words, so a word tokenizer keeps every
id readable ("red" is one token) and a tiny model learns it in seconds. Why *fixed*: later
chapters ship trained weights whose embedding tables have `len(tok)` rows, so the vocabulary
may never change; it is the list `WORDS` below, written out in full, after the special tokens.

Rules of `encode`: lower-case; split off punctuation (. , ? ! : ; ') and any other symbol;
keep special tokens such as "<image>" or "<loc_7>" whole; a word outside the vocabulary
becomes "<unk>".
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch

# Control tokens first ("<pad>" must be id 0: padded embeddings and masks rely on it), then
# grounding tokens (chapter 16: "<box><loc_3><loc_9>...</box>"), chat tokens (chapters 13-14),
# the 32 location bins and reserved slots that later chapters can claim without changing
# the vocabulary size.
NUM_LOC_BINS = 32
NUM_EXTRA = 64
SPECIALS: tuple[str, ...] = (
    "<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<image>",
    "<box>", "</box>", "<ref>", "</ref>", "<sep>", "<im_start>", "<im_end>", "<user>", "<assistant>",
    *(f"<loc_{i}>" for i in range(NUM_LOC_BINS)),
    *(f"<extra_{i}>" for i in range(NUM_EXTRA)),
)

# Every word ShapesWorld can emit (tests check `ShapesWorld.vocabulary()` is a subset), then
# words later chapters need: world facts, instructions, conversations, numbers 0-20.
# Sorted, so a diff shows any change at a glance. Never edit it: ids are baked into weights.
WORDS: tuple[str, ...] = (
    '!', "'", ',', '.', '0', '1', '10', '11', '12', '13', '14', '15', '16', '17', '18', '19', '2', '20', '3', '4',
    '5', '6', '7', '8', '9', ':', ';', '?', 'a', 'about', 'above', 'all', 'also', 'an', 'and', 'angle', 'angles',
    'another', 'answer', 'answers', 'any', 'appear', 'appears', 'apple', 'are', 'area', 'aren', 'arm', 'arms',
    'as', 'assistant', 'at', 'attribute', 'attributes', 'audio', 'b', 'background', 'ball', 'banana', 'be',
    'because', 'been', 'behind', 'being', 'below', 'between', 'big', 'bigger', 'biggest', 'black', 'blood', 'blue',
    'both', 'bottom', 'bottommost', 'bounding', 'box', 'boxes', 'brief', 'bright', 'brown', 'but', 'by', 'c',
    'called', 'camera', 'can', 'cannot', 'caption', 'captions', 'carrot', 'center', 'centre', 'cherry',
    'chocolate', 'circle', 'circles', 'closer', 'closest', 'cloud', 'clouds', 'coal', 'coin', 'cold', 'color',
    'colour', 'column', 'contain', 'containing', 'contains', 'cool', 'coordinates', 'corner', 'corners', 'correct',
    'could', 'count', 'counting', 'cross', 'crosses', 'curved', 'cyan', 'd', 'dark', 'day', 'depth', 'describe',
    'describes', 'description', 'detailed', 'diamond', 'diamonds', 'dice', 'did', 'different', 'dim', 'distance',
    'do', 'does', 'doesn', 'don', 'done', 'dont', 'door', 'down', 'e', 'each', 'edge', 'edges', 'eight',
    'eighteen', 'eleven', 'equal', 'every', 'example', 'examples', 'f', 'fact', 'facts', 'false', 'far',
    'farthest', 'fast', 'fewer', 'fifteen', 'find', 'fire', 'first', 'five', 'flag', 'flower', 'following', 'for',
    'foreground', 'forest', 'format', 'four', 'fourteen', 'fourth', 'frame', 'frames', 'from', 'front', 'further',
    'furthest', 'g', 'give', 'gold', 'golden', 'good', 'grape', 'grass', 'gray', 'great', 'green', 'grey',
    'grounding', 'h', 'had', 'half', 'has', 'have', 'having', 'hear', 'heard', 'hears', 'heart', 'hello', 'here',
    'hexagon', 'hi', 'high', 'hot', 'how', 'hue', 'i', 'ice', 'if', 'image', 'in', 'into', 'is', 'isn', 'it',
    'its', 'j', 'k', 'kind', 'kinds', 'kite', 'know', 'knows', 'l', 'large', 'larger', 'largest', 'last',
    'lavender', 'leaf', 'leaves', 'left', 'leftmost', 'lemon', 'less', 'let', 'letter', 'lies', 'light', 'like',
    'line', 'lines', 'list', 'little', 'locate', 'located', 'location', 'long', 'look', 'looks', 'loud', 'low',
    'lower', 'm', 'made', 'make', 'makes', 'many', 'me', 'medium', 'middle', 'milk', 'minus', 'mix', 'mixed',
    'mixing', 'mixture', 'moon', 'more', 'most', 'move', 'moved', 'moves', 'moving', 'my', 'n', 'name', 'named',
    'near', 'nearest', 'next', 'night', 'nine', 'nineteen', 'no', 'none', 'not', 'number', 'numbers', 'o',
    'object', 'objects', 'ocean', 'of', 'ok', 'okay', 'on', 'one', 'only', 'or', 'orange', 'other', 'out', 'oval',
    'over', 'p', 'pentagon', 'photo', 'picture', 'pink', 'pitch', 'placed', 'plate', 'please', 'plum', 'plus',
    'point', 'pointed', 'points', 'polygon', 'position', 'positions', 'primary', 'purple', 'pyramid', 'q',
    'quarter', 'question', 'questions', 'quiet', 'r', 'rectangle', 'red', 'refer', 'referring', 'refers', 'region',
    'relation', 'relations', 'rhombus', 'right', 'rightmost', 'ring', 'roof', 'rose', 'round', 'row', 's', 'same',
    'sand', 'scene', 'sea', 'second', 'secondary', 'see', 'seen', 'sees', 'sentence', 'seven', 'seventeen',
    'shade', 'shape', 'shapes', 'short', 'should', 'show', 'showing', 'shown', 'shows', 'side', 'sides', 'sign',
    'silver', 'single', 'sits', 'six', 'sixteen', 'size', 'sizes', 'sky', 'slow', 'small', 'smaller', 'smallest',
    'snow', 'so', 'some', 'sound', 'sounds', 'spike', 'spikes', 'square', 'squares', 'star', 'starfish', 'stars',
    'still', 'straight', 'strawberry', 'sum', 'sun', 'sure', 'symmetric', 't', 'table', 'tell', 'ten', 'than',
    'thank', 'thanks', 'that', 'the', 'their', 'them', 'then', 'there', 'these', 'they', 'third', 'thirteen',
    'this', 'those', 'three', 'times', 'tiny', 'tip', 'tips', 'to', 'tomato', 'tone', 'tones', 'top', 'topmost',
    'total', 'tree', 'triangle', 'triangles', 'true', 'twelve', 'twenty', 'two', 'type', 'types', 'u', 'under',
    'up', 'upper', 'use', 'user', 'using', 'v', 'video', 'violet', 'visible', 'w', 'warm', 'was', 'water', 'were',
    'what', 'wheel', 'when', 'where', 'which', 'white', 'who', 'why', 'will', 'window', 'with', 'word', 'words',
    'world', 'would', 'wrong', 'x', 'y', 'yellow', 'yes', 'you', 'your', 'z', 'zero',
)

# A special token, a run of letters/digits, or any other single non-space character.
_TOKEN_RE = re.compile(r"<[^<>\s]+>|[a-z0-9]+|[^\sa-z0-9]")
_NO_SPACE_BEFORE = {".", ",", "?", "!", ":", ";", "'"}
_NO_SPACE_AFTER = {"'"}


def split_words(text: str) -> list[str]:
    """Lower-case `text` and split it into tokens (words, punctuation, "<special>" tokens)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer: `Tokenizer.from_world()` gives the course's fixed vocabulary.

    tok.encode("a red circle.") -> [ids]; tok(["a red circle.", ...], max_len=16) -> (ids, mask)
    with ids (B, T) long and mask (B, T) bool (True = real token; right padding with pad_id).
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"tokens must be unique, got duplicates {dup[:10]}")
        for s in ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<image>"):
            if s not in tokens:
                raise ValueError(f"tokens must contain the special token {s!r}")
        self.vocab: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.specials: list[str] = [t for t in tokens if t.startswith("<") and t.endswith(">") and len(t) > 2]
        self._special_ids = {self.token_to_id[t] for t in self.specials}
        self.pad_id = self.token_to_id["<pad>"]
        self.bos_id = self.token_to_id["<bos>"]
        self.eos_id = self.token_to_id["<eos>"]
        self.unk_id = self.token_to_id["<unk>"]
        self.mask_id = self.token_to_id["<mask>"]
        self.image_id = self.token_to_id["<image>"]

    @classmethod
    def from_world(cls) -> "Tokenizer":
        """The course's fixed vocabulary: SPECIALS then WORDS (the same ids in every chapter)."""
        return cls(list(SPECIALS) + list(WORDS))

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self)}, specials={len(self.specials)})"

    # ------------------------------------------------------------------ single texts
    def id(self, token: str) -> int:
        """Id of one token (unk_id when absent)."""
        return self.token_to_id.get(token, self.unk_id)

    def loc_id(self, k: int) -> int:
        """Id of the location token "<loc_k>" (grounding, chapter 16)."""
        if not 0 <= k < NUM_LOC_BINS:
            raise ValueError(f"location bin must be in [0, {NUM_LOC_BINS - 1}], got {k}")
        return self.token_to_id[f"<loc_{k}>"]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of `text` (before mapping unknown words to <unk>)."""
        return split_words(text)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of one text; unknown words map to unk_id."""
        ids = [self.token_to_id.get(t, self.unk_id) for t in split_words(text)]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of a list or 1-D tensor of ids. With skip_special, every special token except
        <unk> is dropped (padding, bos/eos, image, location tokens ...); pass False to keep them."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id must be in [0, {len(self.vocab) - 1}], got {i}")
            if skip_special and i in self._special_ids and i != self.unk_id:
                continue
            words.append(self.vocab[i])
        out = ""
        for w in words:
            # No space before punctuation, none after an apostrophe: "it ' s" -> "it's".
            if out and w not in _NO_SPACE_BEFORE and out[-1] not in _NO_SPACE_AFTER:
                out += " "
            out += w
        return out

    # ------------------------------------------------------------------ batches
    def __call__(
        self,
        texts: str | Sequence[str],
        max_len: int | None = None,
        add_bos: bool = False,
        add_eos: bool = True,
        padding: str = "longest",
        truncation: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch: ids (B, T) long, attention_mask (B, T) bool, right-padded.

        padding="longest" pads to the longest text (capped at max_len); "max_length" pads every
        row to exactly max_len. truncation cuts texts longer than max_len, keeping the <eos>
        (if added) as the last token so a model still sees where the text ends;
        truncation=False raises ValueError instead.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a str or a list of str")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1 + add_bos + add_eos):
            raise ValueError(f"max_len must be an int >= {1 + add_bos + add_eos}, got {max_len!r}")
        if padding == "max_length" and max_len is None:
            raise ValueError("padding='max_length' needs max_len")
        rows = []
        for text in texts:
            ids = self.encode(text, add_bos=add_bos, add_eos=add_eos)
            if max_len is not None and len(ids) > max_len:
                if not truncation:
                    raise ValueError(
                        f"text has {len(ids)} tokens, longer than max_len={max_len} (truncation=False): {text!r}"
                    )
                ids = ids[: max_len - 1] + [self.eos_id] if add_eos else ids[:max_len]
            rows.append(ids)
        T = max((len(r) for r in rows), default=0)
        if padding == "max_length":
            T = max_len
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)  # (B, T)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = True
        return ids, mask

    def batch_decode(self, ids: torch.Tensor, skip_special: bool = True) -> list[str]:
        """Decode every row of a (B, T) tensor."""
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise ValueError(f"ids must be a 2-D tensor (B, T), got {getattr(ids, 'shape', type(ids))}")
        return [self.decode(row, skip_special=skip_special) for row in ids]
