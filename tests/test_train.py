"""Tests for minivlm.train: learning, clipping, schedules, exact resume, validation."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn

from minivlm.train import History, fit, load_checkpoint, lr_factor, save_checkpoint, to_device
from minivlm.utils import freeze, unfreeze

W_TRUE = torch.tensor([[1.5], [-2.0], [0.5], [3.0]])


def mlp(seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 1))


def regression_batch(i: int):
    x = torch.randn(32, 4)  # torch's global RNG: resuming must restore it
    return {"x": x, "y": x @ W_TRUE}


def mse_step(model, batch):
    pred = model(batch["x"])
    loss = ((pred - batch["y"]) ** 2).mean()
    return {"loss": loss, "mae": (pred - batch["y"]).abs().mean()}


def test_fit_learns_regression():
    model = mlp(0)
    h = fit(model, mse_step, regression_batch, 150, lr=2e-2, progress=False, device="cpu")
    first = sum(h.losses["loss"][:5]) / 5
    assert h.last("loss", 20) < first / 50, (first, h.last("loss", 20))
    # history: one entry per step, for each logged key and the learning rate
    assert h.steps == list(range(150))
    assert len(h.losses["loss"]) == len(h.losses["mae"]) == len(h.lrs) == 150
    assert h.seconds > 0
    assert not model.training  # left in eval mode


def test_cosine_schedule_with_warmup():
    model = mlp(0)
    h = fit(model, mse_step, regression_batch, 20, lr=0.1, warmup=4, progress=False, device="cpu")
    expected = [0.1 * (i + 1) / 4 for i in range(4)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * (i - 4) / 16)) for i in range(4, 20)]
    assert h.lrs == pytest.approx(expected)
    h2 = fit(mlp(0), mse_step, regression_batch, 5, lr=0.1, schedule=None, progress=False, device="cpu")
    assert h2.lrs == pytest.approx([0.1] * 5)
    assert lr_factor(0, 10, "cosine", 0) == 1.0


def test_default_optimizer_decays_only_matrices():
    model = mlp(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def zero_loss(m, b):  # zero gradient: AdamW then changes only the weights that decay
        return {"loss": (m(b["x"]) * 0).sum()}

    fit(model, zero_loss, regression_batch, 1, lr=0.1, weight_decay=0.5, schedule=None, progress=False, device="cpu")
    for n, p in model.named_parameters():
        if p.ndim >= 2:
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n
        else:
            assert torch.equal(p, before[n]), n


def test_clip_grad_limits_the_norm():
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []

    def huge_step(m, b):  # gradients far above the clip threshold
        return {"loss": 1000 * ((m(b["x"]) - b["y"]) ** 2).mean()}

    def cb(i, logs):
        seen.append((logs["grad_norm"], torch.cat([p.grad.flatten() for p in m_params]).norm().item()))

    m_params = list(model.parameters())
    before = torch.cat([p.detach().flatten() for p in m_params])
    fit(model, huge_step, regression_batch, 1, optimizer=opt, schedule=None, clip_grad=0.5, progress=False,
        device="cpu", callback=cb)
    after = torch.cat([p.detach().flatten() for p in m_params])
    raw_norm, clipped_norm = seen[0]
    assert raw_norm > 10  # the unclipped norm was large ...
    assert clipped_norm == pytest.approx(0.5, rel=1e-4)  # ... and the update used the clipped one
    assert (after - before).norm().item() == pytest.approx(0.01 * 0.5, rel=1e-3)


class _Stop(Exception):
    pass


def test_resume_is_bit_identical(tmp_path):
    kw = dict(lr=1e-2, warmup=2, progress=False, device="cpu", checkpoint_every=4, seed=3)
    full = mlp(0, dropout=0.3)  # dropout: the RNG state matters
    h_full = fit(full, mse_step, regression_batch, 12, checkpoint=tmp_path / "full.safetensors", **kw)

    def crash(i, logs):
        if i == 5:  # "crash" after step 5: the last checkpoint holds 4 done steps
            raise _Stop

    interrupted = mlp(0, dropout=0.3)
    with pytest.raises(_Stop):
        fit(interrupted, mse_step, regression_batch, 12, checkpoint=tmp_path / "run.safetensors", callback=crash, **kw)

    calls = []

    def counting_step(m, b):
        calls.append(1)
        return mse_step(m, b)

    resumed = mlp(99, dropout=0.3)  # different init: everything must come from the checkpoint
    h_res = fit(resumed, counting_step, regression_batch, 12, checkpoint=tmp_path / "run.safetensors", resume=True,
                **kw)
    assert len(calls) == 8  # steps 4..11 only
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert h_res.steps == h_full.steps == list(range(12))
    assert h_res.losses["loss"] == h_full.losses["loss"]
    assert h_res.lrs == h_full.lrs

    # without restoring the optimizer and RNGs the weights would differ: the test can fail
    other = mlp(0, dropout=0.3)
    fit(other, mse_step, regression_batch, 12, **{**kw, "seed": 4, "checkpoint_every": 0})
    assert not torch.equal(other[0].weight, full[0].weight)


def test_resume_missing_file_starts_fresh_and_finished_run_is_kept(tmp_path):
    path = tmp_path / "c.safetensors"
    h = fit(mlp(0), mse_step, regression_batch, 5, checkpoint=path, resume=True, progress=False, device="cpu")
    assert h.steps == list(range(5)) and path.is_file()
    calls = []
    h2 = fit(mlp(1), lambda m, b: calls.append(1) or mse_step(m, b), regression_batch, 5, checkpoint=path,
             resume=True, progress=False, device="cpu")
    assert calls == [] and h2.losses["loss"] == h.losses["loss"]


def test_checkpoint_file_layout_and_roundtrip(tmp_path):
    model = mlp(0)
    path = tmp_path / "ck.safetensors"
    fit(model, mse_step, regression_batch, 3, checkpoint=path, progress=False, device="cpu")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["minivlm"])
    assert {"model.0.weight", "model.3.bias", "rng.torch", "optimizer.state.0.exp_avg"} <= keys
    assert meta["step"] == 3 and len(meta["history"]["steps"]) == 3
    # save/load helpers on their own: weights and optimizer state come back exactly
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "b.safetensors", model, opt, step=7, history=History(steps=[0], losses={"loss": [1.0]}))
    model2 = mlp(5)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    state = load_checkpoint(tmp_path / "b.safetensors", model2, opt2)
    assert state["step"] == 7 and state["history"].losses == {"loss": [1.0]}
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 0.01
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors", model2)


def test_tied_weights_can_be_saved(tmp_path):
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight  # weight tying, as in GPT
    model = nn.ModuleDict({"emb": emb, "head": head})
    save_checkpoint(tmp_path / "t.safetensors", model)
    other = nn.ModuleDict({"emb": nn.Embedding(5, 3), "head": nn.Linear(3, 5, bias=False)})
    load_checkpoint(tmp_path / "t.safetensors", other)
    assert torch.equal(other["emb"].weight, emb.weight)


def test_iterable_batches():
    data = [regression_batch(i) for i in range(4)]  # a list: re-iterated like epochs
    model = mlp(0)
    h = fit(model, mse_step, data, 10, lr=1e-2, progress=False, device="cpu")
    assert len(h.steps) == 10
    gen = (regression_batch(i) for i in range(3))  # a generator runs out
    with pytest.raises(ValueError, match="ran out at step 3"):
        fit(mlp(0), mse_step, gen, 10, progress=False, device="cpu")


def test_bad_step_returns_and_arguments():
    x = regression_batch(0)
    with pytest.raises(TypeError, match="must return a dict"):
        fit(mlp(0), lambda m, b: mse_step(m, b)["loss"], regression_batch, 2, progress=False, device="cpu")
    with pytest.raises(ValueError, match="'loss' key"):
        fit(mlp(0), lambda m, b: {"mse": mse_step(m, b)["loss"]}, regression_batch, 2, progress=False, device="cpu")
    with pytest.raises(ValueError, match="scalar"):
        fit(mlp(0), lambda m, b: {"loss": m(b["x"])}, regression_batch, 2, progress=False, device="cpu")
    with pytest.raises(TypeError, match="torch.Tensor"):
        fit(mlp(0), lambda m, b: {"loss": 1.0}, regression_batch, 2, progress=False, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        fit(mlp(0), mse_step, regression_batch, 0)
    with pytest.raises(ValueError, match="steps"):
        fit(mlp(0), mse_step, regression_batch, 2.5)
    with pytest.raises(ValueError, match="schedule"):
        fit(mlp(0), mse_step, regression_batch, 2, schedule="linear")
    with pytest.raises(ValueError, match="checkpoint"):
        fit(mlp(0), mse_step, regression_batch, 2, resume=True)
    assert x["x"].shape == (32, 4)


def test_nan_loss_names_the_step():
    def step(m, b):
        out = mse_step(m, b)
        if b["i"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    with pytest.raises(FloatingPointError, match="step 3"):
        fit(mlp(0), step, lambda i: {**regression_batch(i), "i": i}, 6, progress=False, device="cpu")


def test_freeze_unfreeze_and_params():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    frozen = nn.Sequential(model[0], model[1])
    freeze(frozen)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    before = model[0].weight.detach().clone()
    modes = []
    fit(model, lambda m, b: modes.append((m.training, m[1].training)) or mse_step(m, b), regression_batch, 3,
        progress=False, device="cpu")
    assert modes[0] == (True, False)  # frozen parts stay in eval mode (no dropout) during fit
    assert torch.equal(model[0].weight, before)
    unfreeze(frozen)
    assert all(p.requires_grad for p in frozen.parameters()) and frozen.training
    # params= picks what to optimise
    fit(model, mse_step, regression_batch, 3, params=[model[2].weight], progress=False, device="cpu")
    assert torch.equal(model[0].weight, before)


def test_to_device_recurses_and_history_helpers():
    batch = {"a": [torch.ones(1), (torch.zeros(2), "text")], "n": 3}
    out = to_device(batch, "cpu")
    assert out["a"][1][1] == "text" and out["n"] == 3 and torch.equal(out["a"][0], torch.ones(1))
    h = History(steps=[0, 1, 2], losses={"loss": [3.0, 2.0, 1.0]}, lrs=[1, 1, 1])
    assert h.last("loss", 2) == 1.5
    with pytest.raises(KeyError, match="loss"):
        h.last("itc")


def test_progress_bar_shows_losses_and_amp_is_ignored_on_cpu(capsys):
    h = fit(mlp(0), mse_step, regression_batch, 3, amp=True, desc="toy", progress=True, device="cpu")
    err = capsys.readouterr().err
    assert "toy" in err and "loss=" in err and "mae=" in err and "3/3" in err
    ref = fit(mlp(0), mse_step, regression_batch, 3, progress=False, device="cpu")
    assert h.losses["loss"] == ref.losses["loss"]  # amp on CPU changes nothing


def test_in_a_notebook_the_progress_bar_is_stored_as_its_final_line(tmp_path):
    """Executed in a Jupyter kernel (with ipywidgets), fit draws a widget bar and, when the loop
    ends, replaces it by its final text line: the stored notebook holds that one line, not a widget
    without its state and not a stream of frames."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipywidgets")
    code = ("import torch\nfrom minivlm.train import fit\nm = torch.nn.Linear(2, 1)\n"
            "fit(m, lambda m, b: {'loss': m(b).pow(2).mean()}, lambda i: torch.randn(4, 2), 30, desc='demo')\n"
            "print('done')")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    bars = [o for o in outputs if o.output_type == "display_data"]
    assert len(bars) == 1 and set(bars[0].data) == {"text/plain"}, outputs
    line = bars[0].data["text/plain"]
    assert line.startswith("demo: 100%|") and "30/30" in line and "\n" not in line and "\r" not in line
    assert not any(o.output_type == "stream" and o.name == "stderr" for o in outputs)
    assert [o.text for o in outputs if o.output_type == "stream"] == ["done\n"]
