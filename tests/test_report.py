"""The HTML report: data text is escaped (a corpus with <script> and quotes), the embedded JSON round-trips,
the templates are filled in one pass, the table of contents links every block, the feature browser is
there only with feature data, wide tables get the small font, the package is a floor (imports nothing
above it), and a real headless Chromium loads it without script errors, navigates the feature browser
by hash and renders a non-blank screenshot. Under ASSAY_REQUIRE_PEERS=1 a missing Chromium fails the
test."""

import json
import os
import re
import shutil
import subprocess
from html import escape

import pytest

from assay.report import Section, Table, embed_json, render_report, write_report
from assay.report.html import WIDE_COLUMNS

EVIL = '</script><script>alert("x")</script> \' " & <b>bold</b>'


def _features(n=300):
    lat = []
    for i in range(n):
        toks = ["the", EVIL, f"tok{i}", "<!--", "end"]
        lat.append({"id": i, "freq": 0.01 * (i % 7), "max": 1.0 + i, "hist": [i % 5, 3, 1], "concept": f"depth={i % 4}",
                    "concept_auroc": 0.5 + (i % 50) / 100, "best_for": [EVIL] if i == 5 else [],
                    "contexts": [{"tokens": toks, "acts": [0, 0.5, 1.0 + i, 0, 0], "focus": 2}],
                    "logits": [[EVIL, 1.5], ["b", 0.5]]})
    return {"title": EVIL, "n_latents": n, "latents": lat}


def _render():
    return render_report(f"report {EVIL}", tables=[Table(EVIL, ["method", "x"], [[EVIL, 0.5], ["pca", float("nan")]])],
                         features=_features(), notes=[EVIL])


def test_escaping_and_json_round_trip():
    html = _render()
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    assert html.count("</script>") == 3  # the error hook, the data block and the browser script — nothing injected
    m = re.search(r'<script type="application/json" id="assay-data">(.*?)</script>', html, re.S)
    data = json.loads(m.group(1))
    assert data["features"]["latents"][7]["contexts"][0]["tokens"][1] == EVIL
    assert data["features"]["title"] == EVIL
    assert "&lt;/script&gt;" in html  # escaped in the server-rendered tables / notes
    assert json.loads(embed_json({"a": "\u2028</x>"})) == {"a": "\u2028</x>"}
    with pytest.raises(ValueError):
        embed_json({"a": float("nan")})  # NaN is not JSON: the report converts it to null first


def test_template_is_filled_in_one_pass():
    html = render_report("{{BODY}} {{DATA}}", notes=["{{TITLE}}", "{{SUBTITLE}}"])
    assert "<title>{{BODY}} {{DATA}}</title>" in html and "<h1>{{BODY}} {{DATA}}</h1>" in html
    assert '<p class="muted">{{TITLE}}</p>' in html and '<p class="muted">{{SUBTITLE}}</p>' in html


def test_feature_browser_only_with_feature_data():
    for features in (None, {}, {"title": "empty", "latents": []}):
        html = render_report("r", tables=[Table("t", ["a"], [[1]])], features=features)
        assert "Feature browser" not in html and "<script" not in html and 'id="browser"' not in html
        assert "<nav" not in html  # one block: no table of contents
    html = render_report("r", tables=[Table("t", ["a"], [[1]])], features=_features(3))
    assert html.count('<section id="feature-browser">') == 1 and 'id="browser"' in html
    assert '<a href="#feature-browser">Feature browser</a>' in html


def test_table_of_contents_links_every_block():
    sec = [Section(f"sec {i} {EVIL}", [Table("t", ["a"], [[i]])]) for i in range(3)]
    html = render_report("r", tables=[Table("t", ["a"], [[1]])], sections=sec, notes=["n"])
    nav = re.search(r'<nav class="toc".*?</nav>', html, re.S).group(0)
    links = re.findall(r'<a href="#([^"]+)">(.*?)</a>', nav)
    assert [a for a, _ in links] == ["summary", "section-1", "section-2", "section-3"]
    assert links[1][1] == escape(f"sec 0 {EVIL}")
    ids = re.findall(r'<section id="([^"]+)"><h2>', html)
    assert ids == [a for a, _ in links]  # every link has its target, in the same order
    assert html.index("<nav") < html.index('<section id="summary">')
    assert "<script>alert" not in nav


def test_wide_tables_and_cells():
    narrow = render_report("r", tables=[Table("t", [f"c{i}" for i in range(WIDE_COLUMNS)], [[0] * WIDE_COLUMNS])])
    wide = render_report("r", tables=[Table("t", [f"c_{i}" for i in range(WIDE_COLUMNS + 1)],
                                            [["m", 0.123456, 3, None, float("inf"), "0.5 ± 0.1", 1, 2, 3]])])
    assert 'class="data"' in narrow and 'class="data wide"' in wide
    assert "<th class=\"\">c_<wbr>1</th>" in wide  # long snake_case headers may break after "_"
    cells = re.findall(r'<td class="([^"]*)">(.*?)</td>', wide)
    assert cells[:6] == [("l", "m"), ("n", "0.1235"), ("n", "3"), ("n", "–"), ("n", "–"), ("", "0.5 ±\u00a00.1")]


def test_report_is_a_floor():
    """assay/report imports only the standard library, matplotlib/numpy and the floors artifact/config."""
    import ast
    from pathlib import Path

    import assay.report

    allowed = ("assay.report", "assay.artifact", "assay.config")
    for f in Path(assay.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if n == "assay" or n.startswith("assay."):
                    assert n.startswith(allowed), f"{f.name} imports {n}"


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ASSAY_REQUIRE_PEERS") == "1":
            pytest.fail("chromium is not installed (apt-get install -y chromium); the browser test is required")
        pytest.skip("chromium is not installed")
    return path


def _run(chrome, tmp_path, url, *extra):
    prof = tmp_path / "profile"
    cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={prof}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_in_headless_chromium(tmp_path):
    chrome = _chromium()
    path = write_report(tmp_path / "report.html", f"report {EVIL}", tables=[Table("t", ["a"], [[EVIL]])],
                        features=_features(), notes=[EVIL])
    url = path.resolve().as_uri()
    doms = {}
    for latent in (5, 250):
        r = _run(chrome, tmp_path, f"{url}#latent={latent}", "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        dom = r.stdout
        assert re.search(r'<html[^>]*data-browser-ready="1"', dom), dom[:500]
        assert not re.search(r"<html[^>]*data-js-errors", dom)
        assert "Uncaught" not in r.stderr and not re.search(r"CONSOLE.*(Error|error)", r.stderr)
        assert f"<h3>Latent {latent}</h3>" in dom
        assert "<script>alert" not in dom and "&lt;/script&gt;&lt;script&gt;alert" in dom  # shown as text
        doms[latent] = dom
    assert "page 1 / 6" in doms[5] and "page 6 / 6" in doms[250]  # 300 latents, 50 per page
    assert ">tok250</span>" in doms[250] and ">tok250</span>" not in doms[5]  # rendered context, not the JSON
    shot = tmp_path / "shot.png"
    r = _run(chrome, tmp_path, f"{url}#latent=5", f"--screenshot={shot}", "--window-size=1200,900",
             "--hide-scrollbars")
    assert shot.exists(), r.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[0] >= 800 and img.shape[1] >= 1100
    assert img[..., :3].std() > 0.05  # not blank: text, tables, highlighted tokens
    # a combined report without feature data: contents, no browser, no script at all
    wide = Table("wide", [f"metric_{i}" for i in range(14)], [[f"m{r}", *[0.5 + r] * 13] for r in range(40)])
    path = write_report(tmp_path / "plain.html", "plain", sections=[Section("A", [wide]), Section(EVIL, [])])
    r = _run(chrome, tmp_path, path.resolve().as_uri(), "--dump-dom")
    assert r.returncode == 0 and not re.search(r"<html[^>]*data-js-errors", r.stdout), r.stderr[-2000:]
    assert '<a href="#section-2">' in r.stdout and "Feature browser" not in r.stdout
