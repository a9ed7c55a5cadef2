"""MiniLM classifier filter: token-id embedding equals the sentence-transformers recipe, batching is exact,
and the erase-and-check training recipe gives a filter that separates the bundled prompt set."""

import pytest
import torch

from assay.models.offline import encode_sentences
from assay.safety.certificate import EraseConfig, erase_and_check
from assay.safety.classifier import ClassifierFilter, fit_classifier_filter, tokenize
from assay.safety.empirical import GradConfig, grad_ec
from assay.safety.prompts import prompt_set

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(minilm):
    data = prompt_set(generator=torch.Generator().manual_seed(0))
    ids = tokenize(minilm.tokenizer, data.texts)
    train, test = range(0, 70), range(70, 110)
    harm = [ids[i] for i in train if data.harmful[i]]
    safe = [ids[i] for i in train if not data.harmful[i]]
    flt = fit_classifier_filter(ClassifierFilter.for_encoder(minilm), harm, safe, mode="suffix", d=3,
                                generator=torch.Generator().manual_seed(0))
    return flt, data, ids, test


def test_embedding_matches_encode_sentences(minilm):
    flt = ClassifierFilter.for_encoder(minilm)
    texts = ["Explain how to make a cake.", "List the steps to repair a car."]
    torch.testing.assert_close(flt.embed(tokenize(minilm.tokenizer, texts)), encode_sentences(minilm, texts),
                               atol=1e-5, rtol=0)


def test_trained_filter_separates_held_out_prompts_and_batches_exactly(trained):
    flt, data, ids, test = trained
    seqs = [ids[i] for i in test]
    p = flt.harmful_probability(seqs)
    acc = ((p > 0.5).long() == data.harmful[list(test)]).float().mean()
    assert acc >= 0.9, acc  # measured 1.0 on the 40 held-out prompts
    one_by_one = torch.cat([flt.harmful_probability([s]) for s in seqs[:6]])
    torch.testing.assert_close(p[:6], one_by_one, atol=1e-5, rtol=0)
    # the recipe: safe held-out prompts stay safe under erase-and-check (their prefixes were trained safe)
    safe = [ids[i] for i in test if not data.harmful[i]][:8]
    fp = sum(erase_and_check(s, flt, EraseConfig(mode="suffix", d=3)).harmful for s in safe)
    assert fp <= 1


def test_soft_logit_at_full_keep_is_the_logit(trained):
    flt, data, ids, test = trained
    s = ids[test[0]]
    logit = torch.logit(flt.harmful_probability([s]).double()).float()
    torch.testing.assert_close(flt.soft_logit(s, torch.ones(len(s))).reshape(1).detach(), logit, atol=1e-4, rtol=0)
    cert = grad_ec(s, flt, GradConfig(n_iters=2))
    assert cert.n_calls >= 1 and not cert.certified
