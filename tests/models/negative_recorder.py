"""A stand-in for `minivlm.losses.sample_negatives` that records every call, for the tests of the
pretraining steps that draw ITM negatives (ALBEF, VLMo): monkeypatch it into the model's module."""
from minivlm.losses import sample_negatives


class Recorder:
    """Wraps sample_negatives, keeping what the step passed and got back."""

    def __init__(self):
        self.calls = []

    def __call__(self, similarity, exclude, generator=None):
        out = sample_negatives(similarity, exclude, generator)
        self.calls.append((similarity.detach().clone(), exclude.clone(), out))
        return out
