"""Report sections: a command's section round-trips through section.json, plots stay inside their folder,
`assay report` gathers every section under a folder into one escaped report with a table of contents,
ordered by the time each section was written (then by folder), and a corrupted section.json is refused
with its path."""

import json
import re
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.report import Plot, Section, SectionError, Table, collect_sections, read_section, write_section

EVIL = '</script><script>alert("x")</script> <b>bold</b>'
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def _section(folder, title):
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "a.svg").write_text(SVG)
    return Section(title, [Table(EVIL, ["layer", "auroc"], [[0, 0.5], [1, float("nan")], [EVIL, 0.91]])],
                   [Plot(f"curve {EVIL}", folder / "plots" / "a.svg")], [f"note {EVIL}"])


def test_round_trip_and_standalone_report(tmp_path):
    sec = _section(tmp_path / "probe", "Probe sweep")
    write_section(tmp_path / "probe", sec)
    back = read_section(tmp_path / "probe")
    assert back.title == "Probe sweep" and back.notes == [f"note {EVIL}"]
    assert back.tables[0].rows == [[0, 0.5], [1, None], [EVIL, 0.91]]  # NaN stored as null, shown as –
    assert back.plots[0].path == (tmp_path / "probe" / "plots" / "a.svg").resolve()
    html = (tmp_path / "probe" / "report.html").read_text()
    assert "<script>alert" not in html and "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count("data:image/svg+xml;base64,") == 1
    # the folder can be moved: plots are stored relative to it
    (tmp_path / "probe").rename(tmp_path / "moved")
    assert read_section(tmp_path / "moved").plots[0].path.is_file()


def test_plot_outside_folder_is_refused(tmp_path):
    sec = _section(tmp_path / "elsewhere", "x")
    with pytest.raises(SectionError, match="outside the section folder"):
        write_section(tmp_path / "probe", sec)


def test_collect_and_cli(tmp_path):
    runs = tmp_path / "runs"
    write_section(runs / "b_steer", _section(runs / "b_steer", "Steering"))
    write_section(runs / "a_probe", _section(runs / "a_probe", "Probe sweep"))
    path, n = collect_sections(runs, tmp_path / "all.html", title=f"all {EVIL}")
    html = path.read_text()
    # in the order written (steering first), not by folder name
    assert n == 2 and html.index("<h2>Steering</h2>") < html.index("<h2>Probe sweep</h2>")
    assert re.findall(r'<a href="#(section-\d)">(.*?)</a>', html) == [("section-1", "Steering"),
                                                                      ("section-2", "Probe sweep")]
    assert "<script>alert" not in html and html.count("data:image/svg+xml;base64,") == 2
    res = CliRunner().invoke(app, ["report", "--runs", str(runs), "--out", str(tmp_path / "cli.html")])
    assert res.exit_code == 0, res.output
    assert "2 section(s)" in res.output and (tmp_path / "cli.html").is_file()
    res = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a folder" in res.output


def _set_created(folder, created):
    data = json.loads((folder / "section.json").read_text())
    if created is None:
        del data["created"]
    else:
        data["created"] = created
    (folder / "section.json").write_text(json.dumps(data))


def test_sections_ordered_by_creation_time_then_name(tmp_path):
    runs = tmp_path / "runs"
    before = datetime.now(UTC)
    for name in ("a", "b", "c", "d", "e"):
        write_section(runs / name, Section(f"title {name}"))
    created = json.loads((runs / "a" / "section.json").read_text())["created"]
    assert before <= datetime.fromisoformat(created) <= datetime.now(UTC)
    _set_created(runs / "a", "2024-05-01T12:00:00+00:00")
    _set_created(runs / "b", "2024-05-01T13:30:00+02:00")  # 11:30 UTC: before a
    _set_created(runs / "c", "2024-04-30T09:00:00")  # naive: read as UTC
    _set_created(runs / "d", None)  # written by an older assay: after the dated ones, by folder
    _set_created(runs / "e", None)
    html = collect_sections(runs, tmp_path / "r.html")[0].read_text()
    order = re.findall(r"<h2>title (\w)</h2>", html)
    assert order == ["c", "b", "a", "d", "e"]
    assert "in the order they were written: c, b, a, d, e" in html
    _set_created(runs / "e", "yesterday")
    with pytest.raises(SectionError, match="'created' is not an ISO 8601 time"):
        collect_sections(runs, tmp_path / "r.html")
    _set_created(runs / "e", 5)
    with pytest.raises(SectionError, match="malformed field"):
        read_section(runs / "e")


def test_bad_sections_are_refused(tmp_path):
    with pytest.raises(SectionError, match="no section.json"):
        collect_sections(tmp_path, tmp_path / "r.html")
    with pytest.raises(SectionError, match="not a folder"):
        collect_sections(tmp_path / "missing", tmp_path / "r.html")
    folder = tmp_path / "p"
    write_section(folder, _section(folder, "ok"))
    (folder / "section.json").write_text("{ truncated")
    with pytest.raises(SectionError, match=re.escape(str(folder / "section.json"))):
        read_section(folder)
    data = {"format": 1, "title": "t", "notes": [], "tables": [], "plots": [{"caption": "c", "path": "../x.svg"}]}
    (folder / "section.json").write_text(json.dumps(data))
    with pytest.raises(SectionError, match="outside its folder"):
        read_section(folder)
    (folder / "section.json").write_text(json.dumps({"format": 1, "title": "t"}))
    with pytest.raises(SectionError, match="malformed field"):
        read_section(folder)


def test_feature_browser_travels_with_its_section(tmp_path):
    """A section's feature data is saved beside it, read back, shown in its own report and in the joined
    one (the first section's browser; the others are named in a note), with token text escaped."""
    latents = [{"index": 0, "label": "<b>x</b>", "contexts": []}]
    write_section(tmp_path / "a", Section("A", notes=["n"], features={"title": "A's latents", "latents": latents}))
    write_section(tmp_path / "b", Section("B", features={"title": "B's latents", "latents": latents}))
    write_section(tmp_path / "c", Section("C"))
    back = read_section(tmp_path / "a")
    assert back.features == {"title": "A's latents", "latents": latents}
    assert read_section(tmp_path / "c").features is None and not (tmp_path / "c" / "features.json").exists()
    own = (tmp_path / "a" / "report.html").read_text()
    assert "Feature browser" in own and "<b>x</b>" not in own and "\\u003cb\\u003ex" in own
    assert "Feature browser" not in (tmp_path / "c" / "report.html").read_text()
    path, n = collect_sections(tmp_path, tmp_path / "all.html")
    joined = path.read_text()
    assert n == 3 and "A&#x27;s latents" in joined and "b/report.html" in joined
    (tmp_path / "a" / "features.json").write_text("{")
    with pytest.raises(SectionError, match="features.json is not valid JSON"):
        read_section(tmp_path / "a")
