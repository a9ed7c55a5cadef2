import json
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, field_docs, from_dict, load_toml, to_dict


@dataclass(frozen=True, kw_only=True)
class Demo:
    width: int = 8
    """How wide."""
    kind: Literal["a", "b"] = "a"
    """Which kind."""
    rates: tuple[float, ...] = (0.1, 0.2)
    """Some rates."""
    name: str | None = None
    """Optional name."""


def test_field_docs_and_roundtrip(tmp_path):
    assert field_docs(Demo) == {"width": "How wide.", "kind": "Which kind.", "rates": "Some rates.",
                                "name": "Optional name."}
    cfg = Demo(width=3, kind="b", rates=(1.0,), name="x")
    assert from_dict(Demo, json.loads(json.dumps(to_dict(cfg)))) == cfg
    (tmp_path / "c.toml").write_text('width = 5\nrates = [1, 2]\n')
    assert load_toml(Demo, tmp_path / "c.toml", overrides={"kind": "b"}) == Demo(width=5, rates=(1.0, 2.0), kind="b")


@pytest.mark.parametrize(
    "data, match",
    [({"widht": 3}, "unknown key"), ({"width": "3"}, "must be int"), ({"kind": "c"}, "one of"),
     ({"width": True}, "must be int")],
)
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Demo, data)


def test_artifact_roundtrip_and_corruption(tmp_path):
    w = {"W": torch.randn(3, 4), "b": torch.arange(4, dtype=torch.float16)}
    p = save_artifact(tmp_path / "art", kind="demo.x", config=Demo(width=2), tensors=w, meta={"step": 7})
    art = load_artifact(p, kind="demo", config_cls=Demo, expect={"W": ((3, 4), torch.float32)})
    assert art.config == Demo(width=2) and art.meta == {"step": 7}
    assert all(torch.equal(art.tensors["weights"][k], w[k]) for k in w)
    assert not any(x.name.endswith(".tmp") for x in tmp_path.iterdir())
    with pytest.raises(ArtifactError, match="expected 'sae'"):
        load_artifact(p, kind="sae")
    with pytest.raises(ArtifactError, match="tensor 'W' is"):
        load_artifact(p, expect={"W": ((4, 3), torch.float32)})
    data = bytearray((p / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (p / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupted"):
        load_artifact(p)
    (p / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(p)
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path / "nowhere")


def test_overwrite_is_atomic(tmp_path):
    p = save_artifact(tmp_path / "a", kind="k", config={"v": 1}, tensors={"x": torch.zeros(2)})
    save_artifact(p, kind="k", config={"v": 2}, tensors={"x": torch.ones(2)})
    art = load_artifact(p)
    assert art.config == {"v": 2} and torch.equal(art.tensors["weights"]["x"], torch.ones(2))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a"]


def test_atomic_write_text_has_ordinary_permissions(tmp_path):
    import os

    from assay.artifact import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "hello")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").read_text() == "hello"
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
