"""Samplers: E[v v^T] = I (statistically), DAP alignment, reproducibility."""
import math

import pytest
import torch

from zosci.samplers import SAMPLERS, get_sampler

D = 5
N = 20000


def _draw(name, n, seed=0, guide=None):
    sampler = get_sampler(name)
    like = [torch.zeros(D, dtype=torch.float64)]
    # several estimates of D queries each, so coordinate cycles through full permutations
    return torch.stack([sampler.draw(seed + k // D, k % D, D, like, guide).flat() for k in range(n)])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_second_moment_is_identity(name):
    guide = [torch.tensor([3.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64)] if name == "dap" else None
    v = _draw(name, N, guide=guide)
    outer = v[:, :, None] * v[:, None, :]
    mean, se = outer.mean(0), outer.std(0) / math.sqrt(N)
    eye = torch.eye(D, dtype=torch.float64)
    # 5 standard errors per entry: a false alarm over 25 entries has probability < 1e-5
    assert torch.all((mean - eye).abs() <= 5 * se + 1e-12), (mean - eye).abs().max()


def test_sphere_and_coordinate_have_constant_norm():
    for name in ("sphere", "coordinate", "rademacher"):
        norms = _draw(name, 200).norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(D)))


def test_dap_is_aligned_with_its_guide():
    a = torch.tensor([3.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    v = _draw("dap", 500, guide=[a])
    proj = v @ a
    assert torch.allclose(proj.abs(), torch.full_like(proj, float(a.norm())), rtol=1e-12)
    assert 0.4 < (proj > 0).double().mean() < 0.6  # the sign s is a fair coin


def test_coordinate_covers_every_coordinate_once_per_cycle():
    v = _draw("coordinate", D)
    assert torch.equal((v != 0).sum(0), torch.ones(D, dtype=torch.long))


def test_directions_regenerate_bit_for_bit():
    like = [torch.zeros(3, 4), torch.zeros(7)]
    for name in sorted(SAMPLERS):
        guide = [torch.ones(3, 4), torch.ones(7)] if name == "dap" else None
        a = get_sampler(name).draw(123, 2, 4, like, guide)
        b = get_sampler(name).draw(123, 2, 4, like, guide)
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
        assert a.tensors()[0].shape == (3, 4)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="sampler: unknown 'normal'"):
        get_sampler("normal")
