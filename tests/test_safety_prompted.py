"""Prompted-LLM filter: batched right-padded answer logits equal one unpadded pass per prompt."""

import torch

from assay.safety.certificate import EraseConfig, erase_and_check
from assay.safety.prompted import PromptedFilter


def test_batched_answer_probability_equals_single_passes(llama):
    flt = PromptedFilter(llama, prefix_ids=[1, 5, 6], suffix_ids=[7, 8], yes_id=10, no_id=11, pad_id=0,
                         context_length=50, batch_size=4)
    g = torch.Generator().manual_seed(0)
    seqs = [tuple(torch.randint(12, 64, (int(n),), generator=g).tolist()) for n in (0, 3, 9, 5, 12, 1)]
    got = flt.harmful_probability(seqs)
    for s, p in zip(seqs, got):
        with torch.no_grad():
            z = llama(torch.tensor([[1, 5, 6, *s, 7, 8]])).logits[0, -1, [10, 11]]
        torch.testing.assert_close(p, torch.softmax(z, 0)[0], atol=1e-5, rtol=0)
    cert = erase_and_check(seqs[4], flt, EraseConfig(mode="suffix", d=4, threshold=0.0))  # everything flags
    assert cert.harmful and cert.witness == seqs[4] and cert.n_calls == 5
