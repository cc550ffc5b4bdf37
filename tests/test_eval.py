"""ShapesBench metrics on hand-made cases with known answers."""
import pytest
import torch

from minivlm.eval import normalize_answer, recall_at_k, retrieval_metrics, swap_scores, vqa_accuracy, zero_shot_accuracy


def test_zero_shot_accuracy():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 1, 0, 2])
    # row 0 right, row 1 wrong, row 2 a tie (counts as wrong), row 3 right
    assert zero_shot_accuracy(logits, labels) == 0.5
    assert zero_shot_accuracy(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])) == 0.0  # constant model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g)
    y = torch.randint(0, 7, (50,), generator=g)
    assert zero_shot_accuracy(x, y) == pytest.approx((x.argmax(1) == y).float().mean().item())
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        zero_shot_accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        zero_shot_accuracy(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="integer"):
        zero_shot_accuracy(logits, labels.float())


def test_recall_at_k():
    sim = torch.tensor([
        [0.9, 0.1, 0.0],   # query 0: target 0 at rank 0
        [0.8, 0.5, 0.1],   # query 1: target 1 at rank 1
        [0.7, 0.6, 0.2],   # query 2: target 2 at rank 2
    ])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 3) == 1.0
    # ties count against the model
    assert recall_at_k(torch.ones(4, 4), 1) == 0.0
    assert recall_at_k(torch.ones(4, 4), 4) == 1.0
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 1, targets=torch.tensor([0])) == 0.0
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 2, targets=torch.tensor([0])) == 1.0
    # explicit targets, as a tensor and as sets (any correct candidate counts)
    assert recall_at_k(sim, 1, targets=torch.tensor([0, 0, 0])) == 1.0
    assert recall_at_k(sim, 1, targets=[{0, 2}, {0}, {1}]) == pytest.approx(2 / 3)
    # two correct candidates tied at the top: the other correct one does not push it down
    assert recall_at_k(torch.tensor([[0.5, 0.5, 0.1]]), 1, targets=[{0, 1}]) == 1.0
    # matches a brute-force count on random data
    g = torch.Generator().manual_seed(1)
    s = torch.randn(20, 30, generator=g)
    t = torch.randint(0, 30, (20,), generator=g)
    for k in (1, 5, 10):
        brute = sum(int(t[i]) in s[i].topk(k).indices.tolist() for i in range(20)) / 20
        assert recall_at_k(s, k, targets=t) == pytest.approx(brute)
    with pytest.raises(ValueError, match="k=4 is larger than the number of candidates"):
        recall_at_k(sim, 4)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(sim, 0)
    with pytest.raises(ValueError, match="one entry per query"):
        recall_at_k(sim, 1, targets=[{0}])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        recall_at_k(sim, 1, targets=torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="Nc >= Nq"):
        recall_at_k(torch.randn(4, 2), 1)


def test_retrieval_metrics():
    N = 8
    perfect = torch.eye(N)
    assert retrieval_metrics(perfect) == {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0}
    # images find their text but texts all prefer image 0: i2t perfect, t2i R@1 only 1/N
    sim = torch.eye(N)
    sim[0, :] = 2.0
    m = retrieval_metrics(sim)
    assert m["t2i_r1"] == pytest.approx(1 / N)
    assert m["i2t_r1"] == pytest.approx((N - 1) / N)  # image 0 ties every text
    assert m["t2i_r5"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        retrieval_metrics(torch.randn(8, 9))
    with pytest.raises(ValueError, match="at least 5"):
        retrieval_metrics(torch.eye(3))


def test_swap_scores():
    good = torch.tensor([[2.0, 1.0], [0.0, 3.0]])       # text ok, image ok
    text_only = torch.tensor([[2.0, 1.0], [5.0, 6.0]])  # rows prefer own caption; column 0 prefers image 1
    image_only = torch.tensor([[2.0, 3.0], [1.0, 4.0]])  # s00 > s10 and s11 > s01, but s01 > s00
    tie = torch.ones(2, 2)
    out = swap_scores(torch.stack([good, text_only, image_only, tie]))
    assert out == {"text": 0.5, "image": 0.5, "group": 0.25}
    with pytest.raises(ValueError, match=r"\(\?, 2, 2\)"):
        swap_scores(torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="3 dims"):
        swap_scores(torch.randn(2, 2))


def test_vqa_accuracy():
    assert normalize_answer(" Two. ") == "2" == normalize_answer("2")
    assert normalize_answer("The Red") == "red"
    preds = ["Yes", "two", "blue.", "circle", "left"]
    answers = ["yes", "2", "blue", "square", "right"]
    assert vqa_accuracy(preds, answers) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        vqa_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy([], [])
