"""The zoo's tiny LLM (chapter 09): the shipped weights match their manifest, fit the 8 MB
budget, and reproduce the manifest's held-out fact recall (the >= 95 % bar), perplexity, k-shot
retrieval, counterfactual and chat figures when re-measured from the loaded model."""
import torch

from minivlm import zoo
from minivlm.data.worldtext import WorldText, recall_items
from minivlm.models.gpt import GPT, fact_recall, world_perplexity


def test_llm_matches_its_manifest_and_budget():
    info = zoo.manifest("llm")
    path = zoo.WEIGHTS_DIR / info["file"]
    assert zoo.sha256(path) == info["sha256"] and path.stat().st_size == info["bytes"] <= 8 * 1000 * 1000
    model = zoo.load("llm")
    assert isinstance(model, GPT) and not model.training
    assert model.config.vocab_size == 603 and model.config.max_len == info["config"]["max_len"]


def test_llm_recalls_facts_in_held_out_phrasings():
    info = zoo.manifest("llm")
    model = zoo.load("llm")
    got = fact_recall(model, recall_items("heldout"))
    want = info["metrics"]["recall_heldout"]
    assert got["accuracy"].n == want["n"]
    assert got["accuracy"].value >= 0.95, got["accuracy"]
    assert abs(got["accuracy"].value - want["value"]) <= 0.02  # other CPUs may sum in another order
    for family, estimate in got["per_family"].items():
        assert estimate.value >= 0.75, (family, estimate)


def test_llm_perplexity_reproduces_and_beats_a_fresh_model():
    info = zoo.manifest("llm")
    model = zoo.load("llm")
    docs = WorldText(info["recipe"]["eval_seed"], "heldout").documents(500)
    got = world_perplexity(model, docs)
    assert abs(got.value - info["metrics"]["perplexity_heldout"]["value"]) < 0.01
    torch.manual_seed(0)
    fresh = GPT(model.config).eval()
    assert got.high < world_perplexity(fresh, docs[:50]).low / 50  # trained: far below an untrained model


def test_llm_reads_its_context_as_the_manifest_says():
    from minivlm.data.incontext import kshot_items
    from minivlm.data.worldtext import chat_items, counterfactual_items
    from minivlm.models.gpt import kshot_figures

    info = zoo.manifest("llm")
    model = zoo.load("llm")
    assert model.config.positions == "rope" and model.config.norm == "rmsnorm" and model.config.max_len >= 256
    seed, m = info["recipe"]["eval_seed"], info["metrics"]
    kv = kshot_figures(model, kshot_items("keyvalue", 4, 400, seed, "train"))["exact"]
    assert kv.value >= 0.90 and abs(kv.value - m["kshot_keyvalue_k4_heldin"]["value"]) <= 0.02
    att = {k: kshot_figures(model, kshot_items("attribute", k, 400, seed, "heldout"))["exact"] for k in (0, 4)}
    assert att[4].value >= att[0].value + 0.25 and att[4].low > att[0].high
    for name, items in (("counterfactual", counterfactual_items(600, seed)), ("chat", chat_items(600, seed))):
        got = fact_recall(model, items)["accuracy"]
        assert got.value >= 0.90 and abs(got.value - m[name]["value"]) <= 0.02, (name, got)


def test_llm_manifest_holds_the_gpt2_to_llama_arms():
    arms = zoo.manifest("llm")["arms"]
    assert list(arms) == ["gpt2", "+rmsnorm", "+rope", "+swiglu", "+no bias (llama)"]
    assert all(len(rows) >= 3 and all("perplexity_heldout" in r for r in rows) for rows in arms.values())
    assert len({r["tokens_trained"] for rows in arms.values() for r in rows if r["seed"] == 0}) == 1  # equal data
