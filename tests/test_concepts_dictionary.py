"""The SpLiCE concept dictionary (Bhalla et al. 2024): centring against a by-hand recomputation, the three
builders, the artifact round trip, and the errors for rows that are not normalised or of the wrong dimension."""

import pytest
import torch

from assay.artifact import ArtifactError
from assay.concepts.dictionary import (
    ConceptDictionary,
    DictionaryError,
    from_embeddings,
    from_probes,
    from_sae,
    from_text_model,
    load_dictionary,
    modality_mean,
    save_dictionary,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _emb(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + 2.0


def test_centring_matches_a_by_hand_recomputation():
    e = _emb()
    q = _emb(10, seed=1)
    dic = from_embeddings([f"c{i}" for i in range(6)], e, query_mean=modality_mean(q))
    unit = e / e.norm(dim=1, keepdim=True)
    mu = unit.mean(0)
    rows = (unit - mu) / (unit - mu).norm(dim=1, keepdim=True)
    torch.testing.assert_close(dic.rows, rows)
    torch.testing.assert_close(dic.concept_mean, mu)
    torch.testing.assert_close(dic.query_mean, (q / q.norm(dim=1, keepdim=True)).mean(0))
    assert dic.rows.mean(0).norm() < unit.mean(0).norm() / 3  # centring removes most of the offset (0.20 vs 0.92)
    zq = dic.centre_queries(q)
    ref = q / q.norm(dim=1, keepdim=True) - dic.query_mean
    torch.testing.assert_close(zq, ref / ref.norm(dim=1, keepdim=True))


def test_uncentred_builders_only_normalise():
    w = _emb(4, 3)
    dic = from_sae(w)
    torch.testing.assert_close(dic.rows, w / w.norm(dim=1, keepdim=True))
    assert dic.names == ("latent_0", "latent_1", "latent_2", "latent_3") and dic.source == "sae"
    assert float(dic.concept_mean.abs().sum()) == 0

    class Probe:
        def __init__(self, w):
            self.w = w

    pd = from_probes({"a": Probe(w[0]), "b": w[1]})
    torch.testing.assert_close(pd.rows, dic.rows[:2])
    assert pd.index(["b", "a"]) == [1, 0]
    with pytest.raises(DictionaryError, match="did you mean"):
        pd.index("aa")


def test_save_load_round_trip_and_corruption(tmp_path):
    dic = from_embeddings(["x", "y", "z"], _emb(3, 4), query_mean=torch.ones(4) * 0.1, meta={"ref": "test"})
    path = save_dictionary(tmp_path / "dic", dic)
    back = load_dictionary(path)
    assert back.names == dic.names and back.centred and back.meta == {"ref": "test"}
    for k in ("rows", "concept_mean", "query_mean"):
        assert torch.equal(getattr(back, k), getattr(dic, k))
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupted"):
        load_dictionary(path)


def test_rows_not_normalised_and_wrong_dimension_are_refused_with_the_value():
    rows = torch.eye(3)
    rows[1] *= 2
    with pytest.raises(DictionaryError, match=r"row 1 \('b'\) has norm 2.*divide each row by its norm"):
        ConceptDictionary(names=("a", "b", "c"), rows=rows, concept_mean=torch.zeros(3), query_mean=torch.zeros(3))
    with pytest.raises(DictionaryError, match="query_mean has shape \\(4,\\) but the rows have dimension 3"):
        ConceptDictionary(names=("a", "b", "c"), rows=torch.eye(3), concept_mean=torch.zeros(3),
                          query_mean=torch.zeros(4))
    dic = from_embeddings(["a", "b", "c"], torch.eye(3), centred=False)
    with pytest.raises(DictionaryError, match="queries have dimension 5 but the dictionary's rows have 3"):
        dic.centre_queries(torch.ones(2, 5))
    with pytest.raises(DictionaryError, match="2 concept names for 3 rows"):
        from_embeddings(["a", "b"], torch.eye(3))


def test_text_concepts_through_minilm(minilm):
    from assay.models.offline import encode_sentences

    names = ["dog", "cat", "car", "finance", "music"]
    dic = from_text_model(names, minilm)
    assert dic.d == 384 and dic.source == "text:minilm-l6"
    e = encode_sentences(minilm, names)
    torch.testing.assert_close(dic.concept_mean, e.mean(0), atol=1e-5, rtol=1e-5)
    # after centring, "dog" is still closest to "cat" among the others (semantic structure survives)
    sims = dic.rows @ dic.rows[0]
    assert int(sims[1:].argmax()) == 0
