"""Chapter 04 checks: the library's functions (what the solutions mirror) pass, the stub says "not
implemented yet", and each plausible wrong version fails with its own message."""
import copy

import torch
import torch.nn.functional as F
from grading_suite import grading_tests
from torch import nn

from minivlm.grading import run
from minivlm.losses import mix_targets, sample_negatives, soft_cross_entropy
from minivlm.nn.momentum import momentum_update


def stub(*args, **kwargs):
    raise NotImplementedError("write this part")


GOOD = {"04.momentum_update": momentum_update, "04.mix_targets": mix_targets,
        "04.soft_cross_entropy": soft_cross_entropy, "04.sample_negatives": sample_negatives}


# ----------------------------------------------------------------------------- wrong versions: momentum_update


def _ema(target, online, m, keep=lambda t, o, m: m * t + (1 - m) * o, grad=False, which=None):
    """An EMA with one knob turned: the formula, autograd on, or only the parameters `which(name)` keeps."""
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for (name, t), o in zip(target.named_parameters(), online.parameters()):
            if which is None or which(name):
                t.copy_(keep(t, o, m))


def _rebind(target, online, m):
    for t, o in zip(target.parameters(), online.parameters()):
        t = m * t + (1 - m) * o  # noqa: F841 — a new local tensor, the parameter is untouched


def _returns_new(target, online, m):
    new = copy.deepcopy(target)
    momentum_update(new, online, m)
    return new


def _new_parameters(target, online, m):
    online_modules = dict(online.named_modules())
    with torch.no_grad():
        for name, module in target.named_modules():
            for key, t in list(module._parameters.items()):
                o = online_modules[name]._parameters[key]
                module._parameters[key] = nn.Parameter(m * t + (1 - m) * o)  # requires_grad=True by default


def _updates_online(target, online, m):
    momentum_update(online, target, m)


def _copies_grad(target, online, m):
    momentum_update(target, online, m)
    for t, o in zip(target.parameters(), online.parameters()):
        t.grad = o.grad.clone()


WRONG_MOMENTUM = [
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: (1 - m) * t + m * o), "weights are swapped"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: o.detach()), "overwritten with online"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: m * t), "online's weights are missing"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: m * t + o), "not scaled by (1 − m)"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: t + (1 - m) * o), "old target is not scaled by m"),
    (lambda t, o, m: _ema(t, o, m, keep=lambda t, o, m: 0.995 * t + 0.005 * o), "momentum argument is ignored"),
    (lambda t, o, m: _ema(t, o, m, grad=True), "recorded by autograd"),
    (lambda t, o, m: _ema(t, o, m, which=lambda name: name.endswith("weight")), "were left unchanged"),
    (_rebind, "only rebinds a local name"),
    (_returns_new, "returned a Sequential instead"),
    (_new_parameters, "now require gradients"),
    (_updates_online, "online was updated instead of target"),
    (_copies_grad, "received a .grad"),
]


# ----------------------------------------------------------------------------- wrong versions: mix_targets


def _mix(hard, teacher, alpha, soft=lambda t: t.softmax(dim=1), a=None, detach=True):
    a = alpha if a is None else a
    t = teacher.detach() if detach else teacher
    return (1 - a) * hard + a * soft(t)


def _mix_in_place(hard, teacher, alpha):
    hard.mul_(1 - alpha).add_(alpha * teacher.detach().softmax(dim=1))
    return hard


WRONG_MIX = [
    (lambda h, t, a: a * h + (1 - a) * t.detach().softmax(dim=1), "weights are swapped"),
    (lambda h, t, a: _mix(h, t, a, soft=lambda t: t.softmax(dim=0)), "softmax over the wrong axis"),
    (lambda h, t, a: _mix(h, t, a, soft=lambda t: t), "mixed in raw"),
    (lambda h, t, a: _mix(h, t, a, soft=lambda t: t.log_softmax(dim=1)), "log_softmax gives log-probabilities"),
    (lambda h, t, a: h + a * t.detach().softmax(dim=1), "hard is not scaled by (1 − α)"),
    (lambda h, t, a: t.detach().softmax(dim=1), "only the teacher's probabilities"),
    (lambda h, t, a: _mix(h, t, a, a=0.4), "alpha is ignored"),
    (lambda h, t, a: _mix(h, t, a, detach=False), "attached to the teacher's logits"),
    (lambda h, t, a: _mix(h, t, a).t(), "transposed"),
    (_mix_in_place, "modified in place"),
]


# ----------------------------------------------------------------------------- wrong versions: soft_cross_entropy


def _lsm(z):
    return z.log_softmax(dim=1)


WRONG_SOFT_CE = [
    (lambda z, t: -(t * _lsm(z)).sum(), "summed over the rows"),
    (lambda z, t: -(t * _lsm(z)).mean(), "averaged over all N·C entries"),
    (lambda z, t: (t * _lsm(z)).sum(1).mean(), "sign is wrong"),
    (lambda z, t: -(t * z.softmax(dim=1)).sum(1).mean(), "probabilities where log-probabilities belong"),
    (lambda z, t: -(t * z.log_softmax(dim=0)).sum(1).mean(), "log_softmax over the wrong axis"),
    (lambda z, t: -(t * z).sum(1).mean(), "logits are used raw"),
    (lambda z, t: F.kl_div(_lsm(z), t, reduction="batchmean"), "KL divergence"),
    (lambda z, t: F.cross_entropy(z, t.argmax(dim=1)), "hard labels"),
    (lambda z, t: -(z.softmax(dim=1) * t.log()).sum(1).mean(), "logits and targets are swapped"),
    (lambda z, t: -(t * _lsm(z)).sum(1), "one number per row"),
    (lambda z, t: soft_cross_entropy(z, t).item(), "Python number"),
    (lambda z, t: soft_cross_entropy(z, t).detach(), "detached"),
    (lambda z, t: -(t * (z - z.logsumexp(1, keepdim=True).detach())).sum(1).mean(), "wrong gradient"),
]


# ----------------------------------------------------------------------------- wrong versions: sample_negatives


def _draw(weights):
    return torch.multinomial(weights, 1).squeeze(1)


def _no_exclusion(sim, exclude):
    return _draw(sim.softmax(dim=1))


def _zero_similarity(sim, exclude):
    return _draw(sim.masked_fill(exclude, 0.0).softmax(dim=1))  # exp(0) > 0: positives still drawn


def _diagonal_only(sim, exclude):
    n, m = sim.shape
    eye = torch.zeros(n, m, dtype=torch.bool)
    eye[torch.arange(min(n, m)), torch.arange(min(n, m))] = True
    return _draw(sim.softmax(dim=1).masked_fill(eye, 0.0))


def _argmax(sim, exclude):
    return sim.masked_fill(exclude, float("-inf")).argmax(dim=1)


def _uniform(sim, exclude):
    return _draw((~exclude).float())


def _by_column(sim, exclude):
    return _draw(sim.softmax(dim=0).masked_fill(exclude, 0.0))


def _easiest(sim, exclude):
    return _draw((-sim).softmax(dim=1).masked_fill(exclude, 0.0))


def _too_peaked(sim, exclude):
    return _draw((2 * sim).softmax(dim=1).masked_fill(exclude, 0.0))  # a temperature of ½ that was not asked for


def _in_place(sim, exclude):
    sim[exclude] = float("-inf")
    return _draw(sim.softmax(dim=1))


WRONG_SAMPLER = [
    (_no_exclusion, "a positive was drawn"),
    (_zero_similarity, "a positive was drawn"),
    (_diagonal_only, "excluded only the diagonal"),
    (_argmax, "always the most similar"),
    (_uniform, "uniform over the allowed columns"),
    (_by_column, "softmax over the wrong axis"),
    (_easiest, "least similar columns are drawn most often"),
    (_in_place, "similarity was modified in place"),
    (lambda s, e: torch.multinomial(s.softmax(1).masked_fill(e, 0.0), 1), "squeeze it"),
    (lambda s, e: s.softmax(1).masked_fill(e, 0.0), "not the weights"),
    (lambda s, e: sample_negatives(s, e).float(), "must be integers"),
]

WRONG = {"04.momentum_update": WRONG_MOMENTUM, "04.mix_targets": WRONG_MIX, "04.soft_cross_entropy": WRONG_SOFT_CE,
         "04.sample_negatives": WRONG_SAMPLER}


test_reference_passes, test_stub_says_not_implemented, test_wrong_version_fails_with_its_message = \
    grading_tests(GOOD, WRONG)


def test_chapter_04_has_at_least_three_tasks():
    from minivlm import grading

    assert set(GOOD) <= set(grading.tasks_for_chapter("04"))
    assert len(grading.tasks_for_chapter("04")) >= 3


def test_sampler_check_never_fails_a_correct_sampler_written_another_way():
    """A correct sampler need not draw as torch.multinomial does: inverse-CDF sampling passes too."""

    def inverse_cdf(similarity, exclude):
        weights = similarity.softmax(dim=1).masked_fill(exclude, 0.0)
        cdf = weights.cumsum(dim=1)  # (N, M)
        u = torch.rand(len(similarity), 1) * cdf[:, -1:]  # below the total: never past the last allowed column
        return (cdf < u).sum(dim=1)  # the first column whose cdf reaches u

    for _ in range(5):
        result = run("04.sample_negatives", inverse_cdf)
        assert result.passed, result.message


def test_sampler_mistake_without_a_name_gets_the_frequencies():
    """A sampler with an unasked-for temperature (weights softmax(2·similarity)) is wrong in no named way:
    the message shows the measured frequencies against the expected ones."""
    torch.manual_seed(0)  # the check's inputs come from torch's global generator: pin them
    result = run("04.sample_negatives", _too_peaked)
    assert not result.passed
    assert "do not follow softmax(similarity[i])" in result.message, result.message
    assert "expected about" in result.message, result.message
