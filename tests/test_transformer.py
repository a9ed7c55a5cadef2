import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from assay import hooks
from assay.config import ConfigError
from assay.models.transformer import (
    Transformer,
    TransformerConfig,
    causal_attention,
    naive_causal_attention,
)
from assay.worlds.base import make_generator

CFG = TransformerConfig(vocab_size=11, n_layers=2, n_heads=2, d_model=16, context=12)


def model(cfg=CFG, seed=0):
    return Transformer(cfg, generator=make_generator(seed)).eval()


def tokens(n=3, t=10, seed=1):
    return torch.randint(0, CFG.vocab_size, (n, t), generator=make_generator(seed))


def loop_attention(q, k, v, causal=True):
    """Attention one query at a time over keys up to it (every key when not ``causal``), written without any mask."""
    out = torch.zeros_like(q)
    for i in range(q.shape[-2]):
        end = i + 1 if causal else q.shape[-2]
        s = (q[..., i : i + 1, :] @ k[..., :end, :].transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out[..., i, :] = (s.softmax(-1) @ v[..., :end, :])[..., 0, :]
    return out


def test_sdpa_and_naive_attention_match_a_loop_reference():
    g = make_generator(0)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    ref = loop_attention(q, k, v)
    torch.testing.assert_close(naive_causal_attention(q, k, v), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(causal_attention(q, k, v, impl="sdpa"), ref, rtol=1e-12, atol=1e-12)


def test_unmasked_attention_matches_a_loop_reference():
    g = make_generator(2)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64) for _ in range(3))
    ref = loop_attention(q, k, v, causal=False)
    torch.testing.assert_close(naive_causal_attention(q, k, v, causal=False), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(causal_attention(q, k, v, impl="sdpa", causal=False), ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ref, loop_attention(q, k, v))


def test_encoder_model_matches_hand_written_encoder_and_sees_later_tokens():
    enc_cfg = replace(CFG, causal=False)
    enc, dec = model(enc_cfg), model()
    x = tokens()
    later = x.clone()
    later[:, -1] = (later[:, -1] + 1) % CFG.vocab_size
    eager = Transformer(replace(enc_cfg, attn_impl="eager")).eval()
    eager.load_state_dict(enc.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(enc(x), manual_forward(enc, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eager(x), enc(x), rtol=1e-5, atol=1e-6)
        assert (enc(x)[:, 0] - enc(later)[:, 0]).abs().max() > 1e-4  # position 0 reads the last token
        torch.testing.assert_close(dec(x)[:, :-1], dec(later)[:, :-1])  # a decoder cannot
    with pytest.raises(ConfigError, match="causal"):
        TransformerConfig(vocab_size=5, causal="no")


def test_model_sdpa_equals_eager_model():
    a = model()
    b = Transformer(replace(CFG, attn_impl="eager")).eval()
    b.load_state_dict(a.state_dict())
    x = tokens()
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def manual_forward(m, x):
    """The decoder (or encoder, ``causal=False``) written out by hand from the parameters (independent of the
    module code)."""
    cfg = m.config
    b, t = x.shape
    h = m.embed.weight[x] + m.pos_embed.weight[:t]
    for blk in m.blocks:
        a = F.layer_norm(h, (cfg.d_model,), blk.ln1.weight, blk.ln1.bias)
        qkv = a @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        q, k, v = qkv.split(cfg.d_model, -1)
        q, k, v = (z.reshape(b, t, cfg.n_heads, cfg.d_head).transpose(1, 2) for z in (q, k, v))
        y = loop_attention(q, k, v, cfg.causal).transpose(1, 2).reshape(b, t, cfg.d_model)
        h = h + y @ blk.attn.out.weight.T + blk.attn.out.bias
        a = F.layer_norm(h, (cfg.d_model,), blk.ln2.weight, blk.ln2.bias)
        mid = F.gelu(a @ blk.mlp.fc_in.weight.T + blk.mlp.fc_in.bias)
        h = h + mid @ blk.mlp.fc_out.weight.T + blk.mlp.fc_out.bias
    return F.layer_norm(h, (cfg.d_model,), m.ln_f.weight, m.ln_f.bias) @ m.unembed.weight.T


def test_forward_matches_hand_written_decoder():
    m, x = model(), tokens()
    with torch.no_grad():
        out = m(x)
        ref = manual_forward(m, x)
    assert out.shape == (3, 10, CFG.vocab_size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_causality_later_tokens_do_not_change_earlier_logits(impl):
    m = Transformer(replace(CFG, attn_impl=impl), generator=make_generator(0))
    m.eval()
    x = tokens()
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_hooks_reach_every_named_site():
    m, x = model(), tokens()
    sites = ["embed", "pos_embed", "ln_f", "unembed"]
    for i in range(CFG.n_layers):
        sites += [f"blocks.{i}", f"blocks.{i}.attn", f"blocks.{i}.mlp", f"blocks.{i}.ln1", f"blocks.{i}.ln2"]
    with torch.no_grad(), hooks.capture(m, sites) as cap:
        logits = m(x)
    assert set(cap) == set(sites)
    d = CFG.d_model
    assert cap["embed"].shape == (3, 10, d) and cap["pos_embed"].shape == (10, d)
    torch.testing.assert_close(cap["unembed"], logits, rtol=0, atol=0)
    # the residual stream decomposes: stream_i = stream_{i-1} + attn_i + mlp_i
    prev = cap["embed"] + cap["pos_embed"]
    for i in range(CFG.n_layers):
        torch.testing.assert_close(cap[f"blocks.{i}"], prev + cap[f"blocks.{i}.attn"] + cap[f"blocks.{i}.mlp"])
        prev = cap[f"blocks.{i}"]


def test_zero_ablating_the_last_block_equals_skipping_its_sublayers():
    m, x = model(), tokens()
    last = CFG.n_layers - 1
    with torch.no_grad():
        with hooks.ablate(m, [f"blocks.{last}.attn", f"blocks.{last}.mlp"]):
            ablated = m(x)
        stream = hooks.run_to(m, f"blocks.{last - 1}", x)
        ref = m.unembed(m.ln_f(stream))
    torch.testing.assert_close(ablated, ref, rtol=0, atol=0)


def test_seeded_init_is_reproducible_and_gpt2_scaled():
    a, b, c = model(seed=3), model(seed=3), model(seed=4)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if name.endswith("weight") and "ln" not in name:
            assert not torch.equal(p, r), name
    std = a.blocks[0].attn.out.weight.std().item()
    assert 0.5 * 0.02 / math.sqrt(4) < std < 1.5 * 0.02 / math.sqrt(4)


def test_bad_config_and_input_errors():
    with pytest.raises(ConfigError, match="must divide d_model"):
        TransformerConfig(vocab_size=5, d_model=10, n_heads=3)
    with pytest.raises(ConfigError, match="vocab_size must be a positive integer"):
        TransformerConfig(vocab_size=0)
    with pytest.raises(ConfigError, match="dropout"):
        TransformerConfig(vocab_size=5, dropout=1.0)
    with pytest.raises(ConfigError, match="attn_impl"):
        TransformerConfig(vocab_size=5, attn_impl="flash")
    with pytest.raises(ValueError, match="exceeds the model context"):
        model()(torch.zeros(1, CFG.context + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        model()(torch.zeros(5, dtype=torch.long))


def test_compiled_weight_options_no_norm_and_exact_relu():
    cfg = replace(CFG, norm="none", act="relu", attn_impl="eager")
    m, x = model(cfg), tokens()
    assert isinstance(m.blocks[0].ln1, torch.nn.Identity) and isinstance(m.ln_f, torch.nn.Identity)
    assert not any(".ln" in n or n.startswith("ln_f") for n, _ in m.named_parameters())
    with torch.no_grad(), hooks.capture(m, ["blocks.0.ln2", "blocks.0.mlp", "blocks.0"]) as cap:
        m(x)
    mlp = m.blocks[0].mlp  # hand-written ReLU MLP on the un-normalised stream
    h = cap["blocks.0.ln2"]
    torch.testing.assert_close(cap["blocks.0.mlp"], mlp.fc_out(torch.clamp(mlp.fc_in(h), min=0)))
    with pytest.raises(ConfigError, match="norm"):
        replace(CFG, norm="rms")
    with pytest.raises(ConfigError, match="act"):
        replace(CFG, act="tanh")


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_attention_pattern_is_a_site_that_can_be_read_and_replaced(impl):
    m, x = model(replace(CFG, attn_impl=impl)), tokens()
    with torch.no_grad(), hooks.capture(m, ["blocks.1.ln1", "blocks.1.attn.pattern"]) as cap:
        logits = m(x)
    attn = m.blocks[1].attn
    b, t, d = cap["blocks.1.ln1"].shape
    q, k, _ = attn.qkv(cap["blocks.1.ln1"]).split(d, dim=-1)
    q, k = (z.view(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
    # reference pattern written without the library's softmax helper
    s = (q @ k.transpose(-2, -1)) / math.sqrt(d // 2)
    s = s - torch.triu(torch.full((t, t), 1e9), 1)
    torch.testing.assert_close(cap["blocks.1.attn.pattern"], s.softmax(-1))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(replace(CFG, attn_impl="sdpa"))(x))  # hooking changes nothing
        # replacing the pattern by the one captured is the identity; by a uniform causal one is not
        with hooks.patch(m, {"blocks.1.attn.pattern": lambda p: cap["blocks.1.attn.pattern"]}):
            torch.testing.assert_close(m(x), logits)
        uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
        with hooks.capture(m, ["blocks.1.attn"]) as cap2, hooks.patch(m, {"blocks.1.attn.pattern": lambda p: uniform.expand_as(p)}):
            m(x)
    _, _, v = attn.qkv(cap["blocks.1.ln1"]).split(d, dim=-1)
    v = v.view(b, t, 2, d // 2).transpose(1, 2)
    expect = attn.out((uniform @ v).transpose(1, 2).reshape(b, t, d))
    torch.testing.assert_close(cap2["blocks.1.attn"], expect)
