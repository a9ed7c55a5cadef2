"""assay quickstart at toy size: the ground-truth part (tiny PCFG model, SAEs and PCA scored against the
grammar's labels) writes a report and prints a summary; a re-run reuses every cached result."""

import torch
from typer.testing import CliRunner

from assay.cli import app


def test_quickstart_ground_truth_part(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["quickstart", "--no-lm", "--out-dir", str(tmp_path / "qs"), "--world", "expr:model_steps=20,pool_rows=8",
                "--world-methods", "topk:k=4", "--world-methods", "pca:n=8", "--world-sae-steps", "20"]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        assert "report:" in out.output and "topk (k=4)" in out.output and "pca (n=8)" in out.output
        html = (tmp_path / "qs" / "report.html").read_text().replace("<wbr>", "")  # headers may break at "_"
        assert "assay quickstart" in html and "detect_auroc" in html and "data:image/svg+xml;base64," in html
        from assay.report import read_section

        sec = read_section(tmp_path / "qs")  # the quickstart joins `assay report` as one section
        assert list(sec.tables[0].columns[:2]) == ["method", "level"] and sec.plots
        assert out.output.count("| seed 0:") == 2  # both methods were fitted and scored
        again = CliRunner().invoke(app, args)
        assert again.exit_code == 0 and "| seed 0:" not in again.output  # every run came from the cache
    finally:
        torch.set_num_threads(n)
