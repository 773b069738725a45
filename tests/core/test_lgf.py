"""Local Gram Flow math against a naive loop, and the properties method.md states."""

import itertools

import pytest
import torch

from stages.core.lgf import fuse, lgf_kl, lgf_probs, local_gram, neighbour_offsets, valid_neighbours


def naive_gram(x, kernel, offset):
    """Reference: the definition, one (t, p, d) at a time. x [T, h, w, C]."""
    x = torch.nn.functional.normalize(x.double(), dim=-1, eps=1e-6)
    T, h, w, _ = x.shape
    out = torch.zeros(T - offset, h, w, kernel * kernel, dtype=torch.float64)
    valid = torch.zeros(h, w, kernel * kernel, dtype=torch.bool)
    for t in range(T - offset):
        for i in range(h):
            for j in range(w):
                for n, (dy, dx) in enumerate(neighbour_offsets(kernel)):
                    y, z = i + dy, j + dx
                    if 0 <= y < h and 0 <= z < w:
                        out[t, i, j, n] = (x[t, i, j] * x[t + offset, y, z]).sum()
                        valid[i, j, n] = True
    return out, valid


def naive_probs(gram, valid, tau):
    probs = torch.zeros_like(gram)
    for idx in itertools.product(*(range(n) for n in gram.shape[:-1])):
        v = valid[idx[-2:]]
        probs[idx][v] = torch.softmax(gram[idx][v] / tau, dim=0)
    return probs


@pytest.mark.parametrize("kernel,offsets", [(3, (1,)), (5, (1, 2))])
def test_local_gram_matches_naive_loop(kernel, offsets):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 6, 8)
    got = local_gram(x, kernel, offsets)[0].double()
    want = torch.cat([naive_gram(x[0], kernel, o)[0] for o in offsets])
    assert got.shape == want.shape
    valid = naive_gram(x[0], kernel, 1)[1]
    assert torch.equal(valid, valid_neighbours(5, 6, kernel))
    assert torch.allclose(got * valid, want, atol=1e-5)


def test_probs_match_naive_softmax_and_mask_borders():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 4, 5, 6)
    gram, valid = naive_gram(x[0], 3, 1)
    want = naive_probs(gram, valid, 0.1)
    got = lgf_probs(x, 3, 0.1)[0].double()
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.all(got[:, 0, 0, 0] == 0)  # top-left corner: neighbour (-1, -1) is outside
    assert torch.allclose(got.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64), atol=1e-5)


def test_kl_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 6, 6, 16)
    p = lgf_probs(x, 7, 0.1)
    assert lgf_kl(p, x, 7, 0.1).abs().item() < 1e-5
    assert lgf_kl(p, torch.randn_like(x), 7, 0.1).item() > 0.1


def test_kl_invariant_to_feature_scale():
    """LGF compares relations, not values: rescaling the student changes nothing."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 5, 5, 8)
    p = lgf_probs(x, 3, 0.1)
    assert lgf_kl(p, 7.5 * x, 3, 0.1).abs().item() < 1e-5


def test_fusion_modes_differ_as_method_says():
    torch.manual_seed(4)
    fwd, bwd = torch.randn(1, 3, 5, 5, 8), torch.randn(1, 3, 5, 5, 8)
    k, tau = 3, 0.1
    gram = fuse(fwd, bwd, k, tau, fusion="gram")
    # gram fusion: softmax of the mean Gram, no cross-terms <f_fwd, f_bwd>
    mean_gram = 0.5 * (local_gram(fwd, k) + local_gram(bwd, k))
    valid = valid_neighbours(5, 5, k)
    want = torch.softmax((mean_gram / tau).masked_fill(~valid, -1e4), -1) * valid
    assert torch.allclose(gram, want, atol=1e-6)
    # feature fusion has cross-terms: its Gram is not the mean of the two Grams
    nf, nb = (torch.nn.functional.normalize(t, dim=-1) for t in (fwd, bwd))
    feat_gram = local_gram(0.5 * (fwd + bwd), k)
    cross = local_gram(nf + nb, k, normalize=False) / 4 - 0.5 * mean_gram  # (<a,c>+<b,d>+<a,d>+<b,c>)/4 - (<a,c>+<b,d>)/4
    assert cross.abs().max() > 0.05
    assert not torch.allclose(feat_gram, mean_gram, atol=1e-3)
    probs = fuse(fwd, bwd, k, tau, fusion="probs")
    assert not torch.allclose(probs, gram, atol=1e-4)
    assert torch.allclose(probs, 0.5 * (lgf_probs(fwd, k, tau) + lgf_probs(bwd, k, tau)))
    assert torch.allclose(fuse(fwd, bwd, k, tau, fusion="forward"), lgf_probs(fwd, k, tau))
    assert torch.allclose(fuse(fwd, bwd, k, tau, fusion="backward"), lgf_probs(bwd, k, tau))
    # identical directions: every mode agrees
    for mode in ("gram", "probs", "feature"):
        assert torch.allclose(fuse(fwd, fwd, k, tau, fusion=mode), lgf_probs(fwd, k, tau), atol=1e-5)


def test_gradient_flows_in_fp32_from_half_inputs():
    x = torch.randn(1, 3, 4, 4, 8, dtype=torch.float16)
    p = lgf_probs(torch.randn(1, 3, 4, 4, 8), 3, 0.1)
    s = x.float().requires_grad_()
    loss = lgf_kl(p.half(), s, 3, 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_kl_gradcheck_in_float64():
    torch.manual_seed(5)
    p = lgf_probs(torch.randn(1, 3, 3, 3, 4, dtype=torch.float64), 3, 0.5)
    s = torch.randn(1, 3, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: lgf_kl(p, x, 3, 0.5), (s,))
