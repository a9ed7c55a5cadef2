"""The report's attribution-graph view: a section's graphs (circuit-tracer graph JSON) survive the section
round trip and are drawn in headless Chromium — every node and edge, the first logit selected with its edges
listed — with token text shown as text, never as markup."""

import re

from test_report import EVIL, _chromium, _run

from assay.report import Section, read_section, write_section


def _doc():
    """A hand-made pruned graph: two tokens (one malicious), two features, an error node, one logit."""
    def node(node_id, layer, pos, kind, clerp="", activation=None):
        return {"node_id": node_id, "feature": 0, "layer": layer, "ctx_idx": pos, "feature_type": kind,
                "token_prob": 0.0, "is_target_logit": kind == "logit", "run_idx": 0, "reverse_ctx_idx": 0,
                "jsNodeId": node_id, "clerp": clerp, "influence": 0.5, "activation": activation}

    nodes = [node("E_4_0", "E", 0, "embedding"), node("E_5_1", "E", 1, "embedding"),
             node("0_3_1", "0", 1, "cross layer transcoder", EVIL, 1.5),
             node("1_2_1", "1", 1, "cross layer transcoder", "count", 2.0),
             node("0_1_1", "1", 1, "mlp reconstruction error"),
             node("3_6_1", "3", 1, "logit", 'Output "<eos>" (p=0.9)')]
    links = [("E_4_0", "0_3_1", 2.0), ("E_5_1", "0_3_1", -1.0), ("0_3_1", "1_2_1", 3.0), ("1_2_1", "3_6_1", 4.0),
             ("0_1_1", "3_6_1", -0.5)]
    return {"metadata": {"slug": f"graph {EVIL}", "prompt_tokens": ["<bos>", EVIL], "schema_version": 1},
            "qParams": {}, "nodes": nodes, "links": [{"source": s, "target": t, "weight": w} for s, t, w in links]}


def test_graph_view_in_headless_chromium(tmp_path):
    chrome = _chromium()
    doc = _doc()
    write_section(tmp_path, Section("graphs", notes=["n"], graphs=[doc]))
    assert read_section(tmp_path).graphs == [doc]
    r = _run(chrome, tmp_path, (tmp_path / "report.html").resolve().as_uri(), "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert re.search(r'<html[^>]*data-graphs-ready="1"', dom), dom[:500]
    assert not re.search(r"<html[^>]*data-js-errors", dom)
    assert "Uncaught" not in r.stderr
    assert len(re.findall(r"<circle [^>]*class=\"gnode", dom)) == len(doc["nodes"])
    assert len(re.findall(r"<path [^>]*class=\"gedge", dom)) == len(doc["links"])
    assert {m for m in re.findall(r'data-node="([^"]+)"', dom)} == {n["node_id"] for n in doc["nodes"]}
    # the malicious token and label are text: escaped in the DOM, never an element
    assert "<script>alert" not in dom and "<b>bold</b>" not in dom
    assert dom.count("&lt;/script&gt;&lt;script&gt;alert") >= 3  # token label, node label, the heading
    assert '<text x="' in dom and ">&lt;bos&gt;</text>" in dom  # token names drawn under their columns
    # the first logit is selected: its two incoming edges are listed, the others dimmed
    assert "in from 1_2_1 count" in dom and "in from 0_1_1" in dom
    assert len(re.findall(r'class="gedge dim"', dom)) == 3
