"""Margin heads: hand-computed logits, AdaFace's norm statistics, contract."""

from __future__ import annotations

import math

import pytest

import c4s_core
from c4s_core.errors import ConfigError

torch = pytest.importorskip("torch")

S, T = 64.0, 0.3  # scale; angle between the embedding and class 0


def make(name, **opts):
    head = c4s_core.get_registries().head.build(name, opts).build(2, 2)
    with torch.no_grad():
        head.kernel.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # centres e0, e1 (norms ignored)
    return head


def emb(t=T):
    return torch.tensor([[math.cos(t), math.sin(t)]])


def test_registered_and_validated():
    reg = c4s_core.get_registries().head
    assert reg.names() == ["adaface", "arcface", "cosface", "softmax"]
    assert reg.config("adaface").model_dump() == {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01}
    assert reg.config("arcface").m == 0.5 and reg.config("cosface").m == 0.35
    with pytest.raises(ConfigError, match="m"):
        reg.config("arcface", {"m": -1})
    assert tuple(make("adaface").kernel.shape) == (2, 2)  # AdaFace layout [emb, classes]


def test_arcface_target_is_s_cos_theta_plus_m():
    head = make("arcface")
    out = head(emb(), None, torch.tensor([0]))
    assert out[0, 0].item() == pytest.approx(S * math.cos(T + 0.5), rel=1e-5)
    assert out[0, 1].item() == pytest.approx(S * math.sin(T), rel=1e-5)  # cos(pi/2 - T), no margin
    # beyond pi - m the target logit keeps decreasing: cos(theta) - sin(pi - m) * m
    t = math.pi - 0.2
    far = head(emb(t), None, torch.tensor([0]))
    assert far[0, 0].item() == pytest.approx(S * (math.cos(t) - math.sin(math.pi - 0.5) * 0.5), rel=1e-4)
    easy = make("arcface", easy_margin=True)(emb(t), None, torch.tensor([0]))
    assert easy[0, 0].item() == pytest.approx(S * max(math.cos(t), -1 + 1e-3), rel=1e-4)
    # no labels: plain scaled cosines
    plain = head(emb(), None, None)
    assert plain[0, 0].item() == pytest.approx(S * math.cos(T), rel=1e-5)


def test_cosface_target_is_s_cos_minus_m():
    out = make("cosface")(emb(), None, torch.tensor([1]))
    assert out[0, 1].item() == pytest.approx(S * (math.sin(T) - 0.35), rel=1e-5)
    assert out[0, 0].item() == pytest.approx(S * math.cos(T), rel=1e-5)


def test_adaface_margin_follows_norm():
    head = make("adaface").eval()  # eval: the norm statistics stay fixed
    mean, std = head.batch_mean.item(), head.batch_std.item()
    assert (mean, std) == (20.0, 100.0)  # AdaFace's initial values
    y = torch.tensor([0])
    # norm at the batch mean: margin scaler 0 -> CosFace-like s*(cos - m)
    mid = head(emb(), torch.tensor([[mean]]), y)
    assert mid[0, 0].item() == pytest.approx(S * (math.cos(T) - 0.4), rel=1e-5)
    # high norm (norms are clipped at 100, so narrow the std): scaler clipped to +1
    # -> s*(cos(theta - m) - 2m)
    head.batch_std.fill_(1.0)
    std = 1.0
    high = head(emb(0.9), torch.tensor([[mean + 10 * std]]), y)
    assert high[0, 0].item() == pytest.approx(S * (math.cos(0.9 - 0.4) - 0.8), rel=1e-4)
    # theta - m below 0 is clipped to eps, as AdaFace does
    clip = head(emb(), torch.tensor([[mean + 10 * std]]), y)
    assert clip[0, 0].item() == pytest.approx(S * (math.cos(1e-3) - 0.8), rel=1e-4)
    # norm one std above the mean: scaler = h
    z = 0.333
    one = head(emb(), torch.tensor([[mean + std + 1e-3]]), y)
    assert one[0, 0].item() == pytest.approx(S * (math.cos(T - 0.4 * z) - 0.4 * (1 + z)), rel=1e-4)
    assert one[0, 1].item() == pytest.approx(S * math.sin(T), rel=1e-5)  # non-target untouched
    with pytest.raises(ValueError, match="norms"):
        head(emb(), None, y)


def test_adaface_updates_norm_ema_in_training():
    head = make("adaface", t_alpha=0.5).train()
    norms = torch.tensor([[10.0], [40.0]])
    e = torch.cat([emb(), emb(1.0)])
    head(e, norms, torch.tensor([0, 1]))
    assert head.batch_mean.item() == pytest.approx(0.5 * 20 + 0.5 * 25.0)
    assert head.batch_std.item() == pytest.approx(0.5 * 100 + 0.5 * norms.std().item(), rel=1e-5)
    assert set(head.state_dict()) == {"kernel", "t", "batch_mean", "batch_std"}


def test_softmax_is_linear_on_raw_embedding():
    head = make("softmax")
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -1.0]))
    out = head(emb(), torch.tensor([[3.0]]), torch.tensor([0]))
    raw = 3 * emb()
    expect = raw @ torch.tensor([[2.0, 0.0], [0.0, 3.0]]) + torch.tensor([0.5, -1.0])
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("name", ["adaface", "arcface", "cosface", "softmax"])
def test_margin_lowers_target_logit_and_trains(name):
    torch.manual_seed(0)
    head = c4s_core.get_registries().head.build(name, {}).build(8, 5).train()
    e = torch.nn.functional.normalize(torch.randn(6, 8, requires_grad=True), dim=1)
    norms = torch.full((6, 1), 20.0)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = head(e, norms, y)
    assert logits.shape == (6, 5)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and head.kernel.grad is not None and head.kernel.grad.abs().sum() > 0
    if name != "softmax":
        plain = head(e, norms, None)
        assert (logits.gather(1, y[:, None]) < plain.gather(1, y[:, None])).all()
