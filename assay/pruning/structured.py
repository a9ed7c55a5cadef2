"""Structured pruning: remove whole neurons or channels along their dependency groups, physically.

Dependency groups follow Fang, Ma, Song, Mi, Wang 2023, "DepGraph: Towards Any Structural Pruning"
(CVPR 2023; code ``VainF/Torch-Pruning``): removing output unit c of a layer forces removal of row c of
its weight and entry c of its bias, entry c of the normalisation that follows (BatchNorm's weight,
bias and running statistics), and input slot c of every consumer — for a flatten into a linear layer,
the block of ``h·w`` input columns that channel c became. A unit's group importance is the group
magnitude I_c = Σ_{θ ∈ group} ‖θ[c]‖_p^p (p = 2).

Rather than tracing arbitrary graphs (Torch-Pruning's tracer fails on some models: its issues #519,
#204), assay writes the groups of the models it knows (spec ``pruning.md`` §7):

- :class:`assay.models.mlp.MLP` — the neurons of each hidden layer ``fc{i}`` (rows of ``fc{i}``,
  columns of the next layer);
- :class:`assay.models.cnn.SmallCNN` — the channels of each ``conv{i}`` (with ``bn{i}``; the next conv's
  input channels, or the ``fc`` columns of the flattened last stage);
- :class:`assay.models.transformer.Transformer` — the MLP neurons of each block (rows of
  ``blocks.{i}.mlp.fc_in``, columns of ``blocks.{i}.mlp.fc_out``). Residual-stream dimensions are
  shared through every residual add, so removing the outputs of a layer that writes to the stream
  (``attn.out``, ``mlp.fc_out``, the embeddings) is refused;
- gated MLPs of Llama-style Hugging Face models (SmolLM2): rows of ``gate_proj`` and ``up_proj``,
  columns of ``down_proj`` (``down_proj``/``o_proj`` outputs and the embeddings are refused as above).

Removal keeps the outputs: the smaller model computes exactly what the original computes with the
removed units' activations set to zero. A Transformer keeps ``config.d_mlp`` (a Hugging Face model
its ``config.intermediate_size``) as built — blocks may now differ in width; the modules' own sizes
are updated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from assay.pruning.magnitude import prune_lowest
from assay.pruning.masks import check_sparsity, is_masked

__all__ = ["GroupMember", "UnitGroup", "dependency_groups", "unit_sites", "group_magnitude", "structured_keep",
           "remove_units"]


class GroupMember(NamedTuple):
    """One tensor dimension that a unit of a group indexes."""

    module: str
    """Module path of the tensor's owner."""
    tensor: str
    """Parameter or buffer name (``weight``, ``bias``, ``running_mean``, ``running_var``)."""
    dim: int
    """The dimension indexed by unit."""
    width: int = 1
    """Consecutive slots per unit along ``dim`` (``h·w`` for a channel flattened into a linear layer)."""


class UnitGroup(NamedTuple):
    """The units (neurons, channels) of one layer and every tensor slice they own."""

    layer: str
    """The producing layer; the key of :func:`remove_units`'s ``keep``."""
    n_units: int
    """Number of units the layer has now."""
    members: tuple[GroupMember, ...]
    """The tensors (first the producer's weight) and dimensions a unit indexes."""


def _mlp_groups(model: nn.Module) -> dict[str, UnitGroup]:
    out = {}
    for i in range(model.n_hidden):
        nxt = f"fc{i + 1}" if i + 1 < model.n_hidden else "out"
        out[f"fc{i}"] = UnitGroup(f"fc{i}", getattr(model, f"fc{i}").out_features, (
            GroupMember(f"fc{i}", "weight", 0), GroupMember(f"fc{i}", "bias", 0), GroupMember(nxt, "weight", 1)))
    return out


def _cnn_groups(model: nn.Module) -> dict[str, UnitGroup]:
    out = {}
    area = model.fc.in_features // getattr(model, f"conv{model.n_stages - 1}").out_channels
    for i in range(model.n_stages):
        conv = f"conv{i}"
        members = [GroupMember(conv, "weight", 0)]
        if getattr(model, conv).bias is not None:
            members.append(GroupMember(conv, "bias", 0))
        if model.batch_norm:
            members += [GroupMember(f"bn{i}", t, 0) for t in ("weight", "bias", "running_mean", "running_var")]
        last = i + 1 == model.n_stages
        members.append(GroupMember("fc", "weight", 1, area) if last else GroupMember(f"conv{i + 1}", "weight", 1))
        out[conv] = UnitGroup(conv, getattr(model, conv).out_channels, tuple(members))
    return out


def _transformer_groups(model: nn.Module) -> dict[str, UnitGroup]:
    out = {}
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}.mlp"
        out[f"{p}.fc_in"] = UnitGroup(f"{p}.fc_in", block.mlp.fc_in.out_features, (
            GroupMember(f"{p}.fc_in", "weight", 0), GroupMember(f"{p}.fc_in", "bias", 0),
            GroupMember(f"{p}.fc_out", "weight", 1)))
    return out


def _gated_mlp_groups(model: nn.Module) -> dict[str, UnitGroup]:
    out = {}
    for path, m in model.named_modules():
        parts = [getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(p, nn.Linear) for p in parts):
            members = [GroupMember(f"{path}.{n}", "weight", 0) for n in ("gate_proj", "up_proj")]
            members += [GroupMember(f"{path}.{n}", "bias", 0) for n, p in zip(("gate_proj", "up_proj"), parts)
                        if p.bias is not None]
            members.append(GroupMember(f"{path}.down_proj", "weight", 1))
            out[f"{path}.gate_proj"] = UnitGroup(f"{path}.gate_proj", parts[0].out_features, tuple(members))
    return out


def dependency_groups(model: nn.Module) -> dict[str, UnitGroup]:
    """Layer name → the dependency group of its output units, for the models assay knows: its MLP,
    SmallCNN and Transformer, and any model whose MLPs are gated ``gate_proj``/``up_proj``/``down_proj``
    triples (Llama-style Hugging Face models such as SmolLM2: neuron j is row j of ``gate_proj`` and
    ``up_proj`` and column j of ``down_proj``; the group is keyed by the ``gate_proj`` path)."""
    from assay.models.cnn import SmallCNN
    from assay.models.mlp import MLP
    from assay.models.transformer import Transformer

    for cls, build in ((MLP, _mlp_groups), (SmallCNN, _cnn_groups), (Transformer, _transformer_groups)):
        if type(model) is cls:
            return build(model)
    if groups := _gated_mlp_groups(model):
        return groups
    raise TypeError(f"structured removal knows the dependency groups of assay's MLP, SmallCNN and Transformer and of "
                    f"gated MLPs (gate_proj/up_proj/down_proj), not {type(model).__name__}; it does not trace "
                    "unknown graphs (use assay.pruning.masks for unstructured masks)")


def unit_sites(model: nn.Module) -> dict[str, str]:
    """Activation site → the producing layer that keys its dependency group: the module whose output
    holds each group's units after the nonlinearity, where a gate (:class:`assay.pruning.gates.Gates`)
    sits. assay's MLP ``act{i}`` → ``fc{i}``; SmallCNN ``act{i}`` → ``conv{i}``; a gated MLP's
    ``….mlp.act_fn`` → ``….mlp.gate_proj`` (zeroing act(gate) zeroes the neuron). The Transformer's
    MLP applies GELU functionally, so it has no such site: pass the mapping yourself."""
    from assay.models.cnn import SmallCNN
    from assay.models.mlp import MLP

    if type(model) is MLP:
        return {f"act{i}": f"fc{i}" for i in range(model.n_hidden)}
    if type(model) is SmallCNN:
        return {f"act{i}": f"conv{i}" for i in range(model.n_stages)}
    groups = dependency_groups(model)
    out = {}
    for layer in groups:
        path = layer.removesuffix(".gate_proj")
        if isinstance(getattr(model.get_submodule(path), "act_fn", None), nn.Module):
            out[f"{path}.act_fn"] = layer
    return out


def _group(model: nn.Module, groups: dict[str, UnitGroup], layer: str) -> UnitGroup:
    if layer in groups:
        return groups[layer]
    residual = ("attn.out", "mlp.fc_out", "attn.qkv", "o_proj", "down_proj", "q_proj", "k_proj", "v_proj")
    if layer.endswith(residual) or layer.endswith(("embed", "pos_embed", "embed_tokens")):
        what = ("its outputs are residual-stream dimensions, shared by every residual add, the embeddings and "
                "the final LayerNorm" if not layer.endswith(("attn.qkv", "q_proj", "k_proj", "v_proj"))
                else "attention heads are not removable here (only MLP neurons are)")
        raise ValueError(f"cannot remove output units of layer {layer!r}: {what}; removing them would break the "
                         f"residual add. Removable layers: {', '.join(groups)}")
    raise ValueError(f"layer {layer!r} has no removable units in a {type(model).__name__} (the output layer's units "
                     f"are the model's outputs); removable layers: {', '.join(groups)}")


def group_magnitude(model: nn.Module, group: UnitGroup, p: float = 2.0) -> torch.Tensor:
    """I_c = Σ over the group's parameters (not buffers such as BatchNorm's running statistics) of
    ‖θ[c]‖_p^p, one value per unit (float64)."""
    total = torch.zeros(group.n_units, dtype=torch.float64)
    for m in group.members:
        module = model.get_submodule(m.module)
        if m.tensor not in module._parameters:
            continue
        t = module._parameters[m.tensor].detach().to(torch.float64)
        t = t.movedim(m.dim, 0).reshape(group.n_units, -1)
        total += t.abs().pow(p).sum(dim=1).to(total.device)
    return total


def structured_keep(model: nn.Module, ratio: float, *, layers: tuple[str, ...] | None = None,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep-masks over units removing the fraction ``ratio`` of lowest group magnitude, per layer (each
    layer loses round(ratio · n) units) or globally; ``layers`` defaults to every removable layer."""
    check_sparsity(ratio, "ratio")
    groups = dependency_groups(model)
    names = layers if layers is not None else tuple(groups)
    scores = {n: group_magnitude(model, _group(model, groups, n)) for n in names}
    return prune_lowest(scores, ratio, scope=scope)  # type: ignore[arg-type]


def _slice(t: torch.Tensor, m: GroupMember, idx: torch.Tensor) -> torch.Tensor:
    cols = (idx[:, None] * m.width + torch.arange(m.width, device=idx.device)).reshape(-1)
    return t.detach().index_select(m.dim, cols).clone()


def _resize(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.weight.shape[0]


def remove_units(model: nn.Module, keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """A smaller copy of ``model`` without the units that ``keep`` (layer → boolean per unit, True keeps)
    drops, along each layer's dependency group; ``model`` itself is not changed."""
    if any(is_masked(m) for m in model.modules()):
        raise ValueError("the model carries pruning masks; call assay.pruning.masks.materialize first")
    groups = dependency_groups(model)
    idx = {}
    for layer, k in keep.items():
        g = _group(model, groups, layer)
        if k.dtype != torch.bool or k.shape != (g.n_units,):
            raise ValueError(f"keep for layer {layer!r} must be a boolean tensor of shape ({g.n_units},) (one entry "
                             f"per unit), got {k.dtype} {tuple(k.shape)}")
        if not k.any():
            raise ValueError(f"keep for layer {layer!r} removes all {g.n_units} units, which would cut the model in "
                             "two; keep at least one")
        idx[layer] = k.nonzero().reshape(-1)
    small = copy.deepcopy(model)
    touched = set()
    for layer, i in idx.items():
        for m in groups[layer].members:
            module = small.get_submodule(m.module)
            new = _slice(getattr(module, m.tensor), m, i.to(getattr(module, m.tensor).device))
            if m.tensor in module._parameters:
                module._parameters[m.tensor] = nn.Parameter(new, requires_grad=module._parameters[m.tensor].requires_grad)
            else:
                module._buffers[m.tensor] = new
            touched.add(m.module)
    for name in touched:
        _resize(small.get_submodule(name))
    return small
