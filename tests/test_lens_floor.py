"""The floor module assay.lens: imports nothing above the floors, evaluate/ needs no method package, and
apply_edit is equation (1) of Bhalla et al. 2024 (checked against the formula written out)."""

import ast
import sys
from pathlib import Path

import pytest
import torch

from assay.lens import Ablate, Add, Lens, Read, Scale, Set, apply_edit

ROOT = Path(__file__).resolve().parents[1] / "assay"
METHOD_PACKAGES = ("lenses", "dictionaries", "attribution", "data_attribution", "robustness", "circuits", "pruning",
                   "concepts", "safety", "dynamics", "bench", "cli")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # from assay import lenses
    return out


def test_floor_imports_only_torch_stdlib_and_floors():
    allowed = {"torch", "assay.hooks", "assay.config"}
    bad = [m for m in _imports(ROOT / "lens.py")
           if m.split(".")[0] not in sys.stdlib_module_names and not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert bad == []


def test_evaluate_imports_no_method_package():
    bad = {f"{p.name}: {m}" for p in (ROOT / "evaluate").glob("*.py") for m in _imports(p)
           if any(m == f"assay.{pkg}" or m.startswith(f"assay.{pkg}.") for pkg in METHOD_PACKAGES)}
    assert bad == set()


class Lossy:
    """encode = h W (d → 2), decode = z Wᵀ: loses everything outside the span of W."""

    def __init__(self):
        self.W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])

    def encode(self, h):
        return h @ self.W

    def decode(self, z):
        return z @ self.W.T


def test_apply_edit_is_equation_one():
    lens = Lossy()
    assert isinstance(lens, Lens)
    h = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]])
    z = h @ lens.W
    for edit, z_new in [(Add(concepts=1, amount=2.0, strength=0.5), z + torch.tensor([0.0, 1.0])),
                        (Set(concepts=0, value=4.0, strength=0.5), torch.stack([torch.full((2,), 2.0), z[:, 1]], 1)),
                        (Scale(factor=3.0), 3 * z), (Ablate(concepts=[0]), z * torch.tensor([0.0, 1.0]))]:
        out, code = apply_edit(h, lens, edit)
        torch.testing.assert_close(out, h + (z_new - z) @ lens.W.T)  # h + D(z′) − D(z)
        assert torch.equal(out[:, 2], h[:, 2])  # the reconstruction error (column 2) is kept
        assert torch.equal(code, z)
    for edit in (Read(), Add(amount=5.0, strength=0.0), Set(value=1.0, strength=0.0)):
        assert apply_edit(h, lens, edit)[0] is h  # strength 0 / Read: the tensor itself
    out, _ = apply_edit(h, lens, Add(amount=1.0), scale=torch.tensor([[0.0], [2.0]]))  # per-row strength
    torch.testing.assert_close(out, h + torch.tensor([[0.0, 0.0], [2.0, 2.0]]) @ lens.W.T)
    with pytest.raises(ValueError, match="out of range"):
        apply_edit(h, lens, Add(concepts=2, amount=1.0))
