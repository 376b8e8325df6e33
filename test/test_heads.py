"""Heads: output dict layout, yaw normalisation, occupancy probabilities."""

import torch

from ssm_perception.heads import HEAD_CHANNELS, BevHeads, occupancy_probabilities


def test_heads_dict_shapes_and_priors():
    torch.manual_seed(0)
    heads = BevHeads(8)
    out = heads(torch.randn(2, 8, 5, 7))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, 5, 7) for k, c in HEAD_CHANNELS.items()}
    assert torch.allclose(out["box_yaw"].norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)
    # untrained: centre heatmap starts near its sparse prior, sizes near a car
    zero = heads(torch.zeros(1, 8, 3, 3))
    assert torch.sigmoid(zero["center_logit"]).mean() < 0.05
    assert torch.exp(zero["box_size"]).mean(dim=(0, 2, 3))[0] > 2.0


def test_occupancy_probabilities():
    out = {"occupancy_logit": torch.tensor([[[[0.0, 10.0]]]]), "dynamic_logit": torch.tensor([[[[0.0, -10.0]]]])}
    p_occ, p_dyn = occupancy_probabilities(out)
    assert p_occ.shape == (1, 1, 2)
    assert torch.allclose(p_occ[0, 0], torch.tensor([0.5, 1.0]), atol=1e-4)
    assert torch.allclose(p_dyn[0, 0], torch.tensor([0.25, 0.0]), atol=1e-4)
    assert (p_dyn <= p_occ).all()


def test_heads_backprop():
    heads = BevHeads(4, kernel=3)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    loss = sum(v.sum() for v in heads(x).values())
    loss.backward()
    assert torch.isfinite(x.grad).all()
