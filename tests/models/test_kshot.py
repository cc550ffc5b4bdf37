"""kshot_figures: exact answers and answer types of k-shot items, read word by word."""
import pytest

from minivlm.data.incontext import kshot_items
from minivlm.data.tokenizer import Tokenizer
from minivlm.models.gpt import GPT, GPTConfig, kshot_figures


class Scripted:
    """A stand-in model that continues each prompt with a scripted text."""

    def __init__(self, replies):
        self.replies = replies

    def get_tokenizer(self):
        return Tokenizer.from_world()

    def complete(self, prompts, max_new_tokens, stop):
        assert stop is None and max_new_tokens >= 1
        return [self.replies[p] for p in prompts]


def test_exact_type_and_per_rule_count_what_was_said():
    items = kshot_items("attribute", 2, 8, seed=3)
    replies = {items[0].prompt: items[0].answer + " . more words",  # right, then anything
               items[1].prompt: "<unk>"}  # not even the right type
    other = [a for a in items[2].answer_type if a != items[2].answer][0]
    replies[items[2].prompt] = other  # the right type, not the answer
    for it in items[3:]:
        replies[it.prompt] = it.answer
    f = kshot_figures(Scripted(replies), items)
    assert f["exact"].value == pytest.approx(6 / 8) and f["exact"].n == 8
    assert f["type"].value == pytest.approx(7 / 8)
    assert f["predictions"][0] == items[0].answer
    assert sum(e.n for e in f["per_rule"].values()) == 8


def test_a_real_model_runs_and_bad_input_is_refused():
    model = GPT(GPTConfig.llama(max_len=256, dim=32, depth=1, heads=2)).eval()
    f = kshot_figures(model, kshot_items("keyvalue", 1, 4, seed=0))
    assert 0 <= f["exact"].value <= f["type"].value <= 1 and len(f["predictions"]) == 4
    with pytest.raises(ValueError, match="at least one"):
        kshot_figures(model, [])
