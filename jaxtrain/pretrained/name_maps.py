"""Name maps: published weights' names and layouts -> jaxtrain's variables.

A map is a list of `Rule`s. Each rule matches source names with a regular expression
and names the jaxtrain variable (``params/stage1_block0/conv1/kernel``,
``batch_stats/stem_bn/mean``) and the layout change:

- PyTorch convolutions are (out, in, H, W) ("OIHW"), Flax's (H, W, in, out): `conv`
  transposes (2, 3, 1, 0).
- PyTorch linear layers are (out, in), Flax's Dense (in, out): `linear` transposes.
- PyTorch batch norm ``weight``/``bias``/``running_mean``/``running_var`` are Flax's
  ``params/scale``, ``params/bias``, ``batch_stats/mean``, ``batch_stats/var``;
  ``num_batches_tracked`` has no counterpart (momentum-based averages).
- Layouts ending in ``_split`` may then reshape (same element order) into a target
  of another rank: timm's fused qkv (3*D, D) into jaxtrain's (D, 3, heads, head_dim),
  a patch-embedding convolution into jaxtrain's Dense over flattened (row, col,
  channel) patches.
- big_vision's separate query/key/value projections are the three parts (axis 1 of
  the kernel, axis 0 of the bias) of jaxtrain's fused qkv: rules with ``part``.

Shipped maps (`NAME_MAPS`), for jaxtrain's `resnet18/34/50/101/152` and `vit`:

- ``torchvision_resnet`` / ``timm_resnet``: torchvision's ``resnet.py`` names
  (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}``/``bn{1-3}``,
  ``downsample.0``/``.1``, ``fc``), which timm's ResNet keeps. jaxtrain's ResNet is
  torchvision's v1.5 (stride in the 3x3 conv, symmetric padding, BN epsilon 1e-5), so
  the mapped model computes the same function.
- ``timm_vit``: timm ``vision_transformer.py`` (``patch_embed.proj``, ``pos_embed``,
  ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``,
  ``head``). jaxtrain's ViT has no class token (mean pooling after the final
  LayerNorm: timm's ``class_token=False, global_pool='avg', fc_norm=False``); a
  source's ``cls_token`` is dropped with its position embedding, and the result is
  a starting point for fine-tuning, not the same function. timm's GELU is exact:
  set ``model.activation="gelu"``.
- ``big_vision_vit``: big_vision ``models/vit.py`` (``embedding``,
  ``pos_embedding``, ``Transformer/encoderblock_{i}/LayerNorm_0``,
  ``MultiHeadDotProductAttention_0/{query,key,value,out}``, ``LayerNorm_1``,
  ``MlpBlock_0/Dense_{0,1}``, ``Transformer/encoder_norm``, ``head``; with
  ``pool_type='gap'`` the same function), also the older google-research
  vision_transformer spellings (``posembed_input``, ``..._1``/``LayerNorm_2``/
  ``MlpBlock_3``) and a leading ``params/``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import numpy as np

Layout = Callable[[np.ndarray], np.ndarray]
LAYOUTS: dict[str, Layout] = {
    "copy": lambda x: x,
    "linear": lambda x: x.T,
    "conv": lambda x: x.transpose(2, 3, 1, 0),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """Source names matching `pattern` (whole name) go to `target`.

  Attributes:
    pattern: regular expression over the source name; its groups fill `target`.
    target: ``"/"``-joined jaxtrain variable path, with ``{1}``-style references
      to the pattern's groups (``{0}`` is the whole name).
    layout: `LAYOUTS` key, optionally with ``_split`` (reshape into the target).
    part: (axis, index): the array is slice `index` along `axis` of the target.
    drop: a reason: the source is known and has no counterpart (reported).
  """
  pattern: str
  target: str = ""
  layout: str = "copy"
  part: tuple[int, int] | None = None
  drop: str = ""


def _bn(source: str, target: str) -> list[Rule]:
  """PyTorch BatchNorm2d names under `source` -> Flax BatchNorm under `target`."""
  fields = (("weight", "params", "scale"), ("bias", "params", "bias"),
            ("running_mean", "batch_stats", "mean"),
            ("running_var", "batch_stats", "var"))
  return [Rule(rf"{source}\.{name}", f"{col}/{target}/{leaf}")
          for name, col, leaf in fields] + [
              Rule(rf"{source}\.num_batches_tracked",
                   drop="a PyTorch step counter; Flax's averages need none")]


_BLOCK = r"layer(\d)\.(\d+)"
RESNET = [
    Rule(r"conv1\.weight", "params/stem_conv/kernel", "conv"),
    *_bn("bn1", "stem_bn"),
    Rule(rf"{_BLOCK}\.conv(\d)\.weight", "params/stage{1}_block{2}/conv{3}/kernel",
         "conv"),
    *_bn(rf"{_BLOCK}\.bn(\d)", "stage{1}_block{2}/bn{3}"),
    Rule(rf"{_BLOCK}\.downsample\.0\.weight", "params/stage{1}_block{2}/proj_conv/kernel",
         "conv"),
    *_bn(rf"{_BLOCK}\.downsample\.1", "stage{1}_block{2}/proj_bn"),
    Rule(r"fc\.weight", "params/head/kernel", "linear"),
    Rule(r"fc\.bias", "params/head/bias"),
]


def _ln(source: str, target: str, weight: str = "weight") -> list[Rule]:
  return [Rule(rf"{source}\.{weight}", f"params/{target}/scale"),
          Rule(rf"{source}\.bias", f"params/{target}/bias")]


_TIMM_BLOCK = r"blocks\.(\d+)"
TIMM_VIT = [
    Rule(r"cls_token", drop="jaxtrain's ViT has no class token (mean pooling); "
         "its position embedding is dropped too"),
    Rule(r"pos_embed", "params/pos_embed", "pos_embed"),
    Rule(r"patch_embed\.proj\.weight", "params/patch_embed/kernel", "conv_split"),
    Rule(r"patch_embed\.proj\.bias", "params/patch_embed/bias"),
    *_ln(rf"{_TIMM_BLOCK}\.norm1", "block{1}/ln_attn"),
    Rule(rf"{_TIMM_BLOCK}\.attn\.qkv\.weight", "params/block{1}/attn/qkv/kernel",
         "linear_split"),
    Rule(rf"{_TIMM_BLOCK}\.attn\.qkv\.bias", "params/block{1}/attn/qkv/bias",
         "copy_split"),
    Rule(rf"{_TIMM_BLOCK}\.attn\.proj\.weight", "params/block{1}/attn/out/kernel",
         "linear_split"),
    Rule(rf"{_TIMM_BLOCK}\.attn\.proj\.bias", "params/block{1}/attn/out/bias"),
    *_ln(rf"{_TIMM_BLOCK}\.norm2", "block{1}/ln_mlp"),
    Rule(rf"{_TIMM_BLOCK}\.mlp\.fc(\d)\.weight", "params/block{1}/mlp/fc{2}/kernel",
         "linear"),
    Rule(rf"{_TIMM_BLOCK}\.mlp\.fc(\d)\.bias", "params/block{1}/mlp/fc{2}/bias"),
    *_ln(r"norm", "ln_final"),
    Rule(r"head\.weight", "params/head/kernel", "linear"),
    Rule(r"head\.bias", "params/head/bias"),
]

_BV = r"(?:params/)?"
_BV_BLOCK = _BV + r"Transformer/encoderblock_(\d+)"
_BV_ATTN = _BV_BLOCK + r"/MultiHeadDotProductAttention_[01]"
BIG_VISION_VIT = [
    Rule(_BV + r"cls", drop="jaxtrain's ViT has no class token (mean pooling); "
         "its position embedding is dropped too"),
    Rule(_BV + r"(?:Transformer/posembed_input/)?pos_embedding", "params/pos_embed",
         "pos_embed"),
    Rule(_BV + r"embedding/kernel", "params/patch_embed/kernel", "copy_split"),
    Rule(_BV + r"embedding/bias", "params/patch_embed/bias"),
    Rule(_BV_BLOCK + r"/LayerNorm_0/(scale|bias)", "params/block{1}/ln_attn/{2}"),
    *[Rule(_BV_ATTN + rf"/{name}/kernel", "params/block{1}/attn/qkv/kernel",
           part=(1, i)) for i, name in enumerate(("query", "key", "value"))],
    *[Rule(_BV_ATTN + rf"/{name}/bias", "params/block{1}/attn/qkv/bias",
           part=(0, i)) for i, name in enumerate(("query", "key", "value"))],
    Rule(_BV_ATTN + r"/out/(kernel|bias)", "params/block{1}/attn/out/{2}"),
    Rule(_BV_BLOCK + r"/LayerNorm_[12]/(scale|bias)", "params/block{1}/ln_mlp/{2}"),
    Rule(_BV_BLOCK + r"/MlpBlock_[03]/Dense_0/(kernel|bias)",
         "params/block{1}/mlp/fc1/{2}"),
    Rule(_BV_BLOCK + r"/MlpBlock_[03]/Dense_1/(kernel|bias)",
         "params/block{1}/mlp/fc2/{2}"),
    Rule(_BV + r"Transformer/encoder_norm/(scale|bias)", "params/ln_final/{1}"),
    Rule(_BV + r"head/(kernel|bias)", "params/head/{1}"),
]

NAME_MAPS: dict[str, list[Rule]] = {
    "torchvision_resnet": RESNET,
    "timm_resnet": RESNET,
    "timm_vit": TIMM_VIT,
    "big_vision_vit": BIG_VISION_VIT,
}


@dataclasses.dataclass
class Conversion:
  """What a name map made of a weights file, against a model's variables.

  Attributes:
    arrays: ``{target path: array}`` in the target's shape, ready to load.
    loaded: (source, target) pairs that went into `arrays`.
    missing: target paths no source filled (all of a fused target's parts needed).
    unexpected: source names no rule matched.
    mismatched: (source, target, source shape, target shape) that did not fit.
    dropped: (source, reason) for sources known to have no counterpart.
  """
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[tuple[str, str, tuple, tuple]] = dataclasses.field(
      default_factory=list)
  dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _match(rules: list[Rule], name: str) -> tuple[Rule, str] | None:
  for rule in rules:
    m = re.fullmatch(rule.pattern, name)
    if m:
      return rule, rule.target.format(m.group(0), *m.groups())
  return None


def _fit(rule: Rule, x: np.ndarray, shape: tuple[int, ...],
         has_class_token: bool) -> np.ndarray | None:
  """`x` in the target's layout and `shape`, or None when it cannot fit."""
  base, split = rule.layout.removesuffix("_split"), rule.layout.endswith("_split")
  if base == "pos_embed":
    # A class token's position is the first; the patches' follow (timm, ViT paper).
    if has_class_token and x.ndim == 3 and x.shape[1] == shape[1] + 1:
      x = x[:, 1:]
    base = "copy"
  y = LAYOUTS[base](np.asarray(x))
  if y.shape != tuple(shape) and split and y.size == int(np.prod(shape)):
    y = y.reshape(shape)
  return y if y.shape == tuple(shape) else None


def convert(source: Mapping[str, np.ndarray], rules: list[Rule],
            targets: Mapping[str, tuple[int, ...]]) -> Conversion:
  """Maps `source` arrays onto `targets` (path -> shape) with `rules`.

  Args:
    source: a weights file's arrays by name (`jaxtrain.pretrained.files`).
    rules: a name map, e.g. ``NAME_MAPS["torchvision_resnet"]``.
    targets: the model's variables as ``{"params/...": shape}``.

  Returns:
    The `Conversion`: arrays to load and the report of every name on both sides.
  """
  out = Conversion()
  has_class_token = any(
      (m := _match(rules, n)) is not None and "class token" in m[0].drop
      for n in source)
  parts: dict[str, tuple[int, dict[int, np.ndarray]]] = {}  # target: (axis, slices)
  for name, x in source.items():
    hit = _match(rules, name)
    if hit is None or (not hit[0].drop and hit[1] not in targets):
      out.unexpected.append(name)
      continue
    rule, target = hit
    if rule.drop:
      out.dropped.append((name, rule.drop))
      continue
    shape = targets[target]
    if rule.part is not None:  # one slice of a fused target
      axis, index = rule.part
      shape = shape[:axis] + shape[axis + 1:]
    y = _fit(rule, x, shape, has_class_token)
    if y is None:
      out.mismatched.append((name, target, tuple(np.shape(x)), tuple(shape)))
    elif rule.part is None:
      out.arrays[target] = y
      out.loaded.append((name, target))
    else:
      parts.setdefault(target, (axis, {}))[1][index] = y
      out.loaded.append((name, target))
  for target, (axis, pieces) in parts.items():
    if sorted(pieces) == list(range(targets[target][axis])):  # all of them
      out.arrays[target] = np.stack([pieces[i] for i in sorted(pieces)], axis=axis)
  out.missing = [t for t in targets if t not in out.arrays]
  return out

