"""The AuxK dead-latent loss (Gao et al. 2024): its value against a naive per-row computation, and the
homogeneity of the whole TopK loss in the input scale (#21 item 2: without the input-variance factor the
AuxK term did not scale with the inputs, so input normalisation changed what was trained)."""

import torch

from assay.dictionaries.topk import TopKConfig, TopKSAE, auxk_loss


def _naive_auxk(x, W_enc, b_enc, W_dec, b_dec, x_hat, dead, k_aux):
    """AuxK by loops over rows and dead latents (float64)."""
    rows = []
    e = (x - x_hat).detach()
    dead_idx = [i for i in range(W_enc.shape[1]) if dead[i]]
    for b in range(x.shape[0]):
        pre = {i: max(0.0, float((x[b] - b_dec) @ W_enc[:, i] + b_enc[i])) for i in dead_idx}
        top = sorted(dead_idx, key=lambda i: -pre[i])[: min(k_aux, len(dead_idx))]
        e_hat = sum((pre[i] * W_dec[i] for i in top), torch.zeros(x.shape[1], dtype=x.dtype))
        rows.append(float((e[b] - e_hat).pow(2).sum()))
    num = sum(rows) / len(rows)
    den = float((e - e.mean(0)).pow(2).sum(-1).mean())
    var_x = float((x - x.mean(0)).pow(2).sum(-1).mean())
    return num / den * var_x


def test_auxk_loss_matches_a_naive_per_row_computation():
    g = torch.Generator().manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=6, d_sae=20, k=2, seed=1)).double()
    x = torch.randn(9, 6, generator=g, dtype=torch.float64) * 3 + 1
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[1, 4, 5, 11, 17]] = True
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(20, generator=g, dtype=torch.float64) * 0.1)
        sae.b_dec.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        x_hat = sae(x).recon
        got = auxk_loss(x - sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, x - x_hat, dead, 3, target=x)
    params = [t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    want = _naive_auxk(x, *params, x_hat, dead, 3)
    assert abs(float(got) - want) < 1e-9 * max(1.0, want)


def test_topk_loss_is_homogeneous_of_degree_two_in_the_input_scale():
    """Scaling the inputs and the biases by c scales every term of the loss by c² (before the fix the AuxK
    term stayed put: its ratio to the reconstruction loss moved by 1/c², 1/25 here)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::3] = True
    sae = TopKSAE(TopKConfig(d_in=8, d_sae=32, k=3, seed=0, aux_coef=1 / 32)).double()
    scaled = TopKSAE(TopKConfig(d_in=8, d_sae=32, k=3, seed=0, aux_coef=1 / 32)).double()
    c = 5.0
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        scaled.load_state_dict(sae.state_dict())
        scaled.b_dec.mul_(c)
        scaled.b_enc.mul_(c)
    a, b = sae(x, dead=dead), scaled(c * x, dead=dead)
    assert float(a.aux_loss) > 0
    torch.testing.assert_close(b.aux_loss, c**2 * a.aux_loss, rtol=1e-9, atol=0)
    torch.testing.assert_close(b.loss, c**2 * a.loss, rtol=1e-9, atol=0)


def test_no_dead_latent_means_no_aux_loss_and_the_plain_reconstruction_gradient():
    g = torch.Generator().manual_seed(3)
    sae = TopKSAE(TopKConfig(d_in=6, d_sae=20, k=3))
    x = torch.randn(10, 6, generator=g)
    out = sae(x, dead=torch.zeros(20, dtype=torch.bool))
    assert out.aux_loss == 0 and torch.equal(out.loss, out.rec_loss)
    out.loss.backward()
    got = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    sae(x).loss.backward()  # dead=None: no AuxK at all
    for a, p in zip(got, sae.parameters()):
        assert torch.equal(a, p.grad)


def test_an_exact_fit_gives_no_aux_loss_and_finite_gradients():
    # the residual is exactly 0 (an exact fit) while latents are dead: nothing to rebuild, so AuxK is 0 and its
    # gradient is 0, not NaN (the ratio's value was mended by nan_to_num, its gradient was not: NaN weights)
    g = torch.Generator().manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=6, d_sae=20, k=2, seed=1))
    x = torch.randn(9, 6, generator=g)
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[1, 4, 5]] = True
    loss = auxk_loss(x - sae.b_dec, sae.W_enc, sae.b_enc, sae.W_dec, torch.zeros_like(x), dead, 3, target=x)
    loss.backward()
    assert float(loss.detach()) == 0.0
    for p in (sae.W_enc, sae.b_enc, sae.W_dec):
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().max()) == 0.0
