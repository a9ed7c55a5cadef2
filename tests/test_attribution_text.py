"""Per-token attribution at the embedding layer of a tiny random-init Hugging Face Llama (2 layers).

Oracles: IG completeness (Σ token scores = f(e) − f(baseline)), the logits reached through
``inputs_embeds`` equal those from the token ids, and a hand-written embedding-gradient computation.
"""

import pytest
import torch

from assay.attribution import IntegratedGradientsConfig, OcclusionConfig
from assay.attribution.text import attribute_tokens


class CharTokenizer:
    """A stand-in tokenizer: one token per character, ids = ord(c) mod vocab."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text, return_tensors="pt"):
        ids = torch.tensor([[ord(c) % self.vocab for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                   attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
    return model.double().eval(), CharTokenizer(61)


TEXT = "attribute"


def _manual_gradient(model, tok, target):
    ids = tok(TEXT)["input_ids"]
    e = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=e).logits[0, -1, target]
    (g,) = torch.autograd.grad(logit, e)
    return e.detach(), g, logit.detach(), model(input_ids=ids).logits[0, -1].detach()


def test_integrated_gradients_completeness_at_the_embeddings(llama):
    model, tok = llama
    res = attribute_tokens(model, tok, TEXT, config=IntegratedGradientsConfig(steps=64))
    a = res.attribution
    e, _, logit, logits_from_ids = _manual_gradient(model, tok, int(a.target[0]))
    assert len(res.tokens) == len(TEXT) and res.scores.shape == (len(TEXT),)
    assert int(a.target[0]) == int(logits_from_ids.argmax())  # default target: the top next token
    torch.testing.assert_close(a.output[0], logit)  # the embedding path reproduces the ids path
    with torch.no_grad():
        zero = model(inputs_embeds=torch.zeros_like(e)).logits[0, -1, a.target[0]]
    torch.testing.assert_close(a.baseline_output[0], zero)
    # completeness: Σ_tokens scores = f(e) − f(0) up to the quadrature error (RMSNorm is sharp near the
    # zero embedding, so 64 Gauss–Legendre nodes leave ~1e-5 of |f(e) − f(0)| ≈ 0.2); the reported gap is
    # exactly that difference
    gap = float(res.scores.sum() - (logit - zero))
    assert abs(gap) < 1e-4
    assert abs(float(a.completeness_gap[0]) - gap) < 1e-12
    assert abs(res.completeness_gap - gap) < 1e-9 and res.relative_gap < 1e-3


def test_gradient_and_input_x_gradient_match_manual_embedding_gradient(llama):
    model, tok = llama
    target = 7
    e, g, _, _ = _manual_gradient(model, tok, target)
    grad = attribute_tokens(model, tok, TEXT, target, config="gradient")
    torch.testing.assert_close(grad.attribution.values[0], g[0])
    torch.testing.assert_close(grad.scores, g[0].sum(-1))
    ixg = attribute_tokens(model, tok, TEXT, target, config="input_x_gradient")
    torch.testing.assert_close(ixg.scores, (e[0] * g[0]).sum(-1))


def test_token_occlusion_matches_manual_removal(llama):
    model, tok = llama
    target = 3
    res = attribute_tokens(model, tok, TEXT, target, config=OcclusionConfig())
    e = model.get_input_embeddings()(tok(TEXT)["input_ids"]).detach()
    with torch.no_grad():
        f0 = model(inputs_embeds=e).logits[0, -1, target]
        for i in range(e.shape[1]):
            ei = e.clone()
            ei[0, i] = 0
            drop = f0 - model(inputs_embeds=ei).logits[0, -1, target]
            # the token's score is its drop, once (not once per embedding dimension: D = 16 here)
            assert abs(float(res.scores[i] - drop)) < 1e-9
    with pytest.raises(ValueError, match="out of range"):
        attribute_tokens(model, tok, TEXT, 61, config="gradient")


def test_token_occlusion_from_the_pad_embedding_matches_hand_replacement(llama):
    """Replacing one token by the pad token's embedding by hand gives exactly the occlusion score."""
    model, tok = llama
    tok.pad_token_id = 7
    try:
        res = attribute_tokens(model, tok, TEXT, 3, config="occlusion", baseline="pad")
    finally:
        del tok.pad_token_id
    E = model.get_input_embeddings().weight.detach()
    e = E[tok(TEXT)["input_ids"]]
    with torch.no_grad():
        f0 = model(inputs_embeds=e).logits[0, -1, 3]
        hand = []
        for i in range(e.shape[1]):
            ei = e.clone()
            ei[0, i] = E[7]
            hand.append(float(f0 - model(inputs_embeds=ei).logits[0, -1, 3]))
        f_pad = model(inputs_embeds=E[7].expand(1, len(TEXT), -1)).logits[0, -1, 3]
    torch.testing.assert_close(res.scores, torch.tensor(hand, dtype=res.scores.dtype), rtol=0, atol=1e-9)
    # the token-level gap is Σ scores − (f(x) − f(pad)), a float
    assert isinstance(res.completeness_gap, float)
    assert abs(res.completeness_gap - (sum(hand) - float(f0 - f_pad))) < 1e-9


def test_tokens_are_decoded_text_when_the_tokenizer_can_decode(llama):
    model, tok = llama
    tok.decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)
    try:
        res = attribute_tokens(model, tok, TEXT, 3, config="gradient")
    finally:
        del tok.decode
    assert res.tokens == [chr(97 + i % 26) for i in tok(TEXT)["input_ids"][0].tolist()]
    assert attribute_tokens(model, tok, TEXT, 3, config="gradient").tokens[0].startswith("<")  # raw fallback


def test_embedding_baselines_and_their_errors(llama):
    from assay.attribution.text import embedding_baseline

    model, tok = llama
    ids = tok(TEXT)["input_ids"]
    E = model.get_input_embeddings().weight.detach()
    assert torch.equal(embedding_baseline(model, tok, ids, "zero"), torch.zeros(1, len(TEXT), E.shape[1], dtype=E.dtype))
    torch.testing.assert_close(embedding_baseline(model, tok, ids, "mean")[0, 3], E.mean(0))
    with pytest.raises(ValueError, match="pad or eos token"):
        embedding_baseline(model, tok, ids, "pad")  # CharTokenizer has neither
    tok.eos_token_id = 5
    try:
        assert torch.equal(embedding_baseline(model, tok, ids, "pad")[0, -1], E[5])
        tok.pad_token_id = 7  # the pad token wins over eos
        assert torch.equal(embedding_baseline(model, tok, ids, "pad")[0, 0], E[7])
        # the named baseline reaches the method: f_t(baseline) is the output at the pad embedding
        res = attribute_tokens(model, tok, TEXT, 3, config="integrated_gradients", baseline="pad")
        with torch.no_grad():
            f_b = model(inputs_embeds=E[7].expand(1, len(TEXT), -1)).logits[0, -1, 3]
        torch.testing.assert_close(res.attribution.baseline_output[0], f_b)
        # methods without a reference input ignore it
        grad = attribute_tokens(model, tok, TEXT, 3, config="gradient", baseline="pad")
        assert torch.isnan(grad.attribution.baseline_output).all()
    finally:
        del tok.eos_token_id
        tok.__dict__.pop("pad_token_id", None)
    with pytest.raises(ValueError, match="unknown text baseline"):
        embedding_baseline(model, tok, ids, "blank")


def test_encoder_mean_pool_ig_is_complete_from_the_pad_embedding():
    """MiniLM-style encoder (a tiny random BERT, no head): the explained scores are the mean-pooled last
    hidden state; IG from the pad embedding sums to f(e) − f(pad) over the tokens."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bert = transformers.BertModel(cfg, add_pooling_layer=False).double().eval()
    tok = CharTokenizer(61)
    tok.pad_token_id = 0
    res = attribute_tokens(bert, tok, TEXT, 3, config=IntegratedGradientsConfig(steps=64), pool="mean", baseline="pad")
    a = res.attribution
    ids = tok(TEXT)["input_ids"]
    with torch.no_grad():
        f_x = bert(input_ids=ids).last_hidden_state.mean(1)[0, 3]
        pad = bert.get_input_embeddings().weight[0].expand(1, len(TEXT), -1)
        f_b = bert(inputs_embeds=pad).last_hidden_state.mean(1)[0, 3]
    torch.testing.assert_close(a.output[0], f_x)
    torch.testing.assert_close(a.baseline_output[0], f_b)
    assert abs(float(res.scores.sum() - (f_x - f_b))) < 1e-3 * max(1.0, abs(float(f_x - f_b)))
