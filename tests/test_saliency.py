"""Tests of lib.saliency against finite differences, torch.autograd.functional.hvp and closed forms."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lib.saliency import balanced_batch, batch_loss, grasp_scores, hessian_gradient_product, snip_scores


def small_net(seed: int = 0) -> nn.Module:
    """A float64 net with a BatchNorm layer (train mode), so batch statistics enter the loss."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).double()


def small_batch(seed: int = 0, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=generator)
    return X, y


def loss_of(model: nn.Module, X: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(X) / temperature, y).item()


def test_snip_matches_central_finite_differences_entry_by_entry():
    model, (X, y) = small_net(), small_batch()
    scores = snip_scores(model, X, y)
    assert set(scores) == {"0.weight", "3.weight"}  # weight matrices by default
    params = dict(model.named_parameters())
    h = 1e-6
    for name, score in scores.items():
        p = params[name]
        for flat in range(0, p.numel(), 4):
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), p.shape))
            with torch.no_grad():
                original = p[idx].item()
                p[idx] = original + h
                up = loss_of(model, X, y)
                p[idx] = original - h
                down = loss_of(model, X, y)
                p[idx] = original
            derivative = (up - down) / (2 * h)
            assert score[idx].item() == pytest.approx(abs(original * derivative), rel=1e-5, abs=1e-9)


def test_snip_sum_is_a_directional_derivative_when_signs_are_known():
    """sum_i theta_i g_i = d/dt L((1 + t) theta) at t = 0 for the scored entries (all weights of layer 3)."""
    model, (X, y) = small_net(1), small_batch(1)
    names = ["3.weight", "3.bias"]
    scores = snip_scores(model, X, y, names=names)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(batch_loss(model, X, y), [params[n] for n in names])
    signed = sum((params[n].detach() * g).sum() for n, g in zip(names, grads, strict=True))
    assert sum(s.sum() for s in scores.values()).item() >= abs(signed.item()) - 1e-12
    h = 1e-6
    originals = {n: params[n].detach().clone() for n in names}
    values = []
    for t in (h, -h):
        with torch.no_grad():
            for n in names:
                params[n].copy_(originals[n] * (1 + t))
        values.append(loss_of(model, X, y))
    with torch.no_grad():
        for n in names:
            params[n].copy_(originals[n])
    assert (values[0] - values[1]) / (2 * h) == pytest.approx(signed.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 7.0])
def test_hessian_gradient_product_matches_autograd_functional_hvp(temperature):
    model, (X, y) = small_net(2), small_batch(2)
    names = ["0.weight", "0.bias", "1.weight", "3.weight"]
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}

    def loss(*tensors):
        values = dict(zip(names, tensors, strict=True)) | fixed
        return F.cross_entropy(functional_call(model, values, (X,)) / temperature, y)

    point = tuple(params[n].detach().clone() for n in names)
    grads = torch.autograd.functional.jacobian(loss, point)
    _, oracle = torch.autograd.functional.hvp(loss, point, v=tuple(grads))
    ours = hessian_gradient_product(model, X, y, names=names, temperature=temperature)
    for n, expected in zip(names, oracle, strict=True):
        torch.testing.assert_close(ours[n], expected, rtol=1e-9, atol=1e-12)


def test_hessian_gradient_product_matches_differences_of_gradients():
    model, (X, y) = small_net(3), small_batch(3)
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def gradient() -> list[torch.Tensor]:
        return [g.detach() for g in torch.autograd.grad(batch_loss(model, X, y), params)]

    g0 = gradient()
    h = 1e-5
    shifted = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, g in zip(params, g0, strict=True):
                p.add_(sign * h * g)
        shifted.append(gradient())
        with torch.no_grad():
            for p, g in zip(params, g0, strict=True):
                p.sub_(sign * h * g)
    ours = hessian_gradient_product(model, X, y, names=names)
    for n, up, down in zip(names, *shifted, strict=True):
        torch.testing.assert_close(ours[n], (up - down) / (2 * h), rtol=1e-5, atol=1e-9)


def test_grasp_sum_is_the_first_order_change_of_the_gradient_norm_when_weights_shrink():
    """Moving the entries of a set R by -eps * theta changes |g|^2 / 2 by eps * sum_R S + O(eps^2), where g is
    the gradient with respect to the scored parameters (the weight matrices)."""
    model, (X, y) = small_net(6), small_batch(6)
    scores = grasp_scores(model, X, y, temperature=2.0)
    weight = dict(model.named_parameters())["0.weight"]
    removed = torch.zeros_like(weight, dtype=torch.bool)
    removed[::2, 1:4] = True

    def half_squared_gradient_norm() -> float:
        weights = [p for p in model.parameters() if p.ndim >= 2]  # the scored parameters
        grads = torch.autograd.grad(batch_loss(model, X, y, temperature=2.0), weights)
        return 0.5 * sum((g**2).sum() for g in grads).item()

    base, original, eps = half_squared_gradient_norm(), weight.detach().clone(), 1e-6
    changes = []
    for sign in (1, -1):
        with torch.no_grad():
            weight.copy_(torch.where(removed, original * (1 - sign * eps), original))
        changes.append(half_squared_gradient_norm() - base)
    with torch.no_grad():
        weight.copy_(original)
    predicted = scores["0.weight"][removed].sum().item()
    assert (changes[0] - changes[1]) / (2 * eps) == pytest.approx(predicted, rel=1e-4)


def softmax_regression_closed_form(W, X, y, temperature):
    """Gradient G and H G of mean CE(X W^T / T) for a bias-free linear model, by hand."""
    n, classes = X.shape[0], W.shape[0]
    Y = F.one_hot(y, classes).double()
    P = torch.softmax(X @ W.T / temperature, dim=1)
    G = (P - Y).T @ X / (n * temperature)
    S = X @ G.T / temperature  # change of the logits along direction G
    dP = P * (S - (P * S).sum(dim=1, keepdim=True))
    return G, dP.T @ X / (n * temperature)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 9),
    d=st.integers(1, 5),
    classes=st.integers(2, 4),
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([1.0, 3.0, 200.0]),
)
def test_snip_and_grasp_of_softmax_regression_match_closed_form(n, d, classes, seed, temperature):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, classes, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, d, generator=generator, dtype=torch.float64))
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=generator)
    W = model.weight.detach()
    G1, _ = softmax_regression_closed_form(W, X, y, 1.0)
    torch.testing.assert_close(snip_scores(model, X, y)["weight"], (W * G1).abs())
    _, HG = softmax_regression_closed_form(W, X, y, temperature)
    torch.testing.assert_close(grasp_scores(model, X, y, temperature=temperature)["weight"], -W * HG)


def test_scoring_leaves_parameters_and_batchnorm_statistics_untouched():
    model, (X, y) = small_net(4), small_batch(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snip_scores(model, X, y)
    grasp_scores(model, X, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


class WithIdleLayer(nn.Module):
    """A linear classifier that also owns a layer its forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.idle = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_scores_of_parameters_that_do_not_reach_the_loss_are_zero():
    model = WithIdleLayer().double()
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.equal(hessian_gradient_product(model, X, y, names=["idle.weight"])["idle.weight"], zeros)
    assert torch.equal(snip_scores(model, X, y)["idle.weight"], zeros)
    assert snip_scores(model, X, y)["used.weight"].abs().sum() > 0


def test_balanced_batch_takes_per_class_distinct_rows_of_each_class():
    X = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    y = torch.tensor([0, 1, 2, 3] * 5)
    Xb, yb = balanced_batch(X, y, 3, seed=5)
    assert yb.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    rows = (Xb[:, 0] / 2).long()
    assert len(set(rows.tolist())) == 12
    assert torch.equal(y[rows], yb) and torch.equal(X[rows], Xb)
    assert torch.equal(balanced_batch(X, y, 3, seed=5)[0], Xb)
    assert not torch.equal(balanced_batch(X, y, 3, seed=6)[0], Xb)


def test_bad_inputs_raise_clear_errors():
    model, (X, y) = small_net(), small_batch()
    with pytest.raises(TypeError, match="model"):
        snip_scores("not a model", X, y)
    with pytest.raises(ValueError, match="X must be"):
        snip_scores(model, X[0], y)
    with pytest.raises(ValueError, match="same n"):
        snip_scores(model, X, y[:-1])
    with pytest.raises(TypeError, match="int64"):
        snip_scores(model, X, y.double())
    with pytest.raises(ValueError, match="names"):
        snip_scores(model, X, y, names=["nope"])
    with pytest.raises(ValueError, match="names"):
        grasp_scores(model, X, y, names=[])
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            grasp_scores(model, X, y, temperature=bad)
    with pytest.raises(TypeError, match="temperature"):
        hessian_gradient_product(model, X, y, temperature=True)
    with pytest.raises(ValueError, match="per_class"):
        balanced_batch(X, y, 50, seed=0)
    with pytest.raises(ValueError, match="per_class"):
        balanced_batch(X, y, 0, seed=0)
