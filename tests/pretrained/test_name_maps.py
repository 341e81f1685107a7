"""Name maps against numpy forward passes written from the source libraries' code.

Each reference below restates the original definition in numpy, in the original
layout (PyTorch NCHW / OIHW / (out, in); big_vision's einsum kernels):
torchvision ``models/resnet.py`` (BasicBlock, Bottleneck v1.5, stem, max pool,
BatchNorm2d eval with eps 1e-5), timm ``vision_transformer.py`` (Block, Attention:
fused qkv reshaped to (B, N, 3, heads, head_dim); exact GELU; LayerNorm eps 1e-6;
here with ``class_token=False, global_pool='avg', fc_norm=False``) and big_vision
``models/vit.py`` (``Encoder1DBlock``, flax ``MultiHeadDotProductAttention``, tanh
GELU, ``pool_type='gap'``). Random weights in those layouts go through the map into
jaxtrain's model, whose logits must equal the reference's.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxtrain import models
from jaxtrain.pretrained import name_maps, variables

RNG = np.random.default_rng(0)


def _normal(*shape, scale=1.0):
  return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ----- torchvision ResNet -----------------------------------------------------

def _conv(x, w, stride, pad):
  """PyTorch conv2d, no bias: x (N, C, H, W), w (O, I, kh, kw)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
  win = win[:, :, ::stride, ::stride]
  return np.einsum("nchwij,ocij->nohw", win, w)


def _bn(x, sd, name, eps=1e-5):
  g, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
  m, v = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
  r = lambda a: a[None, :, None, None]  # noqa: E731
  return (x - r(m)) / np.sqrt(r(v) + eps) * r(g) + r(b)


def _max_pool(x):  # 3x3, stride 2, padding 1 (with -inf)
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
  return win[:, :, ::2, ::2].max(axis=(-2, -1))


def _block(x, sd, p, bottleneck, stride):
  relu = lambda a: np.maximum(a, 0)  # noqa: E731
  if bottleneck:  # v1.5: the stride is in conv2 (the 3x3)
    y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
    y = relu(_bn(_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
    y = _bn(_conv(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
  else:
    y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
    y = _bn(_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
  if f"{p}.downsample.0.weight" in sd:
    x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd,
            f"{p}.downsample.1")
  return relu(x + y)


LAYERS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
          50: ((3, 4, 6, 3), True)}


def torchvision_resnet(x, sd, depth):
  layers, bottleneck = LAYERS[depth]
  x = np.maximum(_bn(_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"), 0)
  x = _max_pool(x)
  for i, n in enumerate(layers):
    for j in range(n):
      x = _block(x, sd, f"layer{i + 1}.{j}", bottleneck, 2 if i and not j else 1)
  return x.mean(axis=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


def torchvision_state_dict(depth, num_classes):
  """Random weights with the names and shapes of torchvision's resnet{depth}."""
  layers, bottleneck = LAYERS[depth]
  expansion = 4 if bottleneck else 1
  sd = {"conv1.weight": _normal(64, 3, 7, 7, scale=math.sqrt(2 / 147))}

  def bn(name, c):
    sd.update({f"{name}.weight": RNG.uniform(0.5, 1.5, c).astype(np.float32),
               f"{name}.bias": _normal(c, scale=0.1),
               f"{name}.running_mean": _normal(c, scale=0.1),
               f"{name}.running_var": RNG.uniform(0.5, 1.5, c).astype(np.float32),
               f"{name}.num_batches_tracked": np.array(7, np.int64)})

  def conv(name, o, i, k):
    sd[name] = _normal(o, i, k, k, scale=math.sqrt(2 / (i * k * k)))

  bn("bn1", 64)
  inplanes = 64
  for i, n in enumerate(layers):
    planes = 64 * 2**i
    for j in range(n):
      p, stride = f"layer{i + 1}.{j}", 2 if i and not j else 1
      kernels = ((1, planes), (3, planes), (1, planes * 4)) if bottleneck else (
          (3, planes), (3, planes))
      cin = inplanes
      for k, (size, cout) in enumerate(kernels):
        conv(f"{p}.conv{k + 1}.weight", cout, cin, size)
        bn(f"{p}.bn{k + 1}", cout)
        cin = cout
      if stride != 1 or inplanes != planes * expansion:
        conv(f"{p}.downsample.0.weight", planes * expansion, inplanes, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  sd["fc.weight"] = _normal(num_classes, inplanes, scale=1 / math.sqrt(inplanes))
  sd["fc.bias"] = _normal(num_classes, scale=0.1)
  return sd


def _init(model, image):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image, train=False))


def _logits(model, shapes_tree, arrays, image):
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn_unbox(shapes_tree))
  return np.asarray(model.apply(variables.replace(zeros, arrays), image, train=False))


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.meta.unbox(tree)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("map_name", ["torchvision_resnet", "timm_resnet"])
def test_torchvision_resnet_weights_give_torchvisions_logits(depth, map_name):
  sd = torchvision_state_dict(depth, num_classes=10)
  model = models.get_model(f"resnet{depth}", num_classes=10)
  image = _normal(2, 32, 32, 3)
  tree = _init(model, jnp.asarray(image))
  conv = name_maps.convert(sd, name_maps.NAME_MAPS[map_name], variables.shapes(tree))
  assert not (conv.missing or conv.unexpected or conv.mismatched)
  assert {s for s, _ in conv.dropped} == {
      k for k in sd if k.endswith("num_batches_tracked")}
  ours = _logits(model, tree, conv.arrays, jnp.asarray(image))
  want = torchvision_resnet(image.transpose(0, 3, 1, 2).astype(np.float64), sd, depth)
  np.testing.assert_allclose(ours, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_resnet50_imagenet_head_onto_ten_classes_is_reported_not_loaded():
  sd = torchvision_state_dict(50, num_classes=1000)
  model = models.get_model("resnet50", num_classes=10)
  conv = name_maps.convert(sd, name_maps.RESNET,
                           variables.shapes(_init(model, jnp.zeros((1, 32, 32, 3)))))
  assert conv.mismatched == [("fc.weight", "params/head/kernel", (1000, 2048),
                              (2048, 10)),
                             ("fc.bias", "params/head/bias", (1000,), (10,))]
  assert sorted(conv.missing) == ["params/head/bias", "params/head/kernel"]
  assert len(conv.loaded) == len(sd) - 53 - 2  # 53 BNs' step counters, the head
  assert not conv.unexpected


def test_names_no_rule_knows_are_unexpected():
  sd = torchvision_state_dict(18, num_classes=10)
  sd["layer5.0.conv1.weight"] = _normal(1, 1, 1, 1)
  sd["fc.extra"] = _normal(3)
  model = models.get_model("resnet18", num_classes=10)
  conv = name_maps.convert(sd, name_maps.RESNET,
                           variables.shapes(_init(model, jnp.zeros((1, 32, 32, 3)))))
  assert sorted(conv.unexpected) == ["fc.extra", "layer5.0.conv1.weight"]
  assert not conv.missing


# ----- ViTs -------------------------------------------------------------------

D, HEADS, MLP, P, DEPTH, CLASSES = 32, 4, 64, 4, 2, 5


def _vit(activation):
  return models.get_model("vit", num_classes=CLASSES, patch_size=P, width=D,
                          depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                          activation=activation)


def _layer_norm(x, g, b, eps=1e-6):
  m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * g + b


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def timm_state_dict(n_tokens, class_token):
  sd = {"patch_embed.proj.weight": _normal(D, 3, P, P, scale=0.2),
        "patch_embed.proj.bias": _normal(D, scale=0.1),
        "pos_embed": _normal(1, n_tokens + class_token, D, scale=0.1),
        "norm.weight": RNG.uniform(0.5, 1.5, D).astype(np.float32),
        "norm.bias": _normal(D, scale=0.1),
        "head.weight": _normal(CLASSES, D, scale=0.2),
        "head.bias": _normal(CLASSES, scale=0.1)}
  if class_token:
    sd["cls_token"] = _normal(1, 1, D)
  for i in range(DEPTH):
    b = f"blocks.{i}"
    for n in ("norm1", "norm2"):
      sd[f"{b}.{n}.weight"] = RNG.uniform(0.5, 1.5, D).astype(np.float32)
      sd[f"{b}.{n}.bias"] = _normal(D, scale=0.1)
    for n, (o, i_) in {"attn.qkv": (3 * D, D), "attn.proj": (D, D),
                       "mlp.fc1": (MLP, D), "mlp.fc2": (D, MLP)}.items():
      sd[f"{b}.{n}.weight"] = _normal(o, i_, scale=1 / math.sqrt(i_))
      sd[f"{b}.{n}.bias"] = _normal(o, scale=0.1)
  return sd


def timm_vit(image_nchw, sd):
  """timm VisionTransformer(class_token=False, global_pool='avg', fc_norm=False)."""
  x = _conv(image_nchw, sd["patch_embed.proj.weight"], P, 0)
  x = x + sd["patch_embed.proj.bias"][None, :, None, None]
  b, _, h, w = x.shape
  x = x.reshape(b, D, h * w).transpose(0, 2, 1) + sd["pos_embed"]
  hd = D // HEADS
  for i in range(DEPTH):
    p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
    y = _layer_norm(x, p("norm1.weight"), p("norm1.bias"))
    qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(
        b, -1, 3, HEADS, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    a = _softmax(q @ k.transpose(0, 1, 3, 2) * hd**-0.5) @ v
    x = x + a.transpose(0, 2, 1, 3).reshape(b, -1, D) @ p("attn.proj.weight").T \
        + p("attn.proj.bias")
    y = _layer_norm(x, p("norm2.weight"), p("norm2.bias"))
    y = y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
    y = 0.5 * y * (1 + special.erf(y / math.sqrt(2)))  # nn.GELU(): exact
    x = x + y @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
  x = _layer_norm(x, sd["norm.weight"], sd["norm.bias"]).mean(axis=1)
  return x @ sd["head.weight"].T + sd["head.bias"]


def test_timm_vit_weights_give_timms_logits():
  image = _normal(2, 16, 16, 3)
  sd = timm_state_dict((16 // P)**2, class_token=False)
  model = _vit("gelu")
  tree = _init(model, jnp.asarray(image))
  conv = name_maps.convert(sd, name_maps.TIMM_VIT, variables.shapes(tree))
  assert not (conv.missing or conv.unexpected or conv.mismatched or conv.dropped)
  ours = _logits(model, tree, conv.arrays, jnp.asarray(image))
  want = timm_vit(image.transpose(0, 3, 1, 2).astype(np.float64), sd)
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)


def test_timm_class_token_is_dropped_with_its_position():
  sd = timm_state_dict((16 // P)**2, class_token=True)
  tree = _init(_vit("gelu"), jnp.zeros((1, 16, 16, 3)))
  conv = name_maps.convert(sd, name_maps.TIMM_VIT, variables.shapes(tree))
  assert [s for s, _ in conv.dropped] == ["cls_token"]
  assert not (conv.missing or conv.unexpected or conv.mismatched)
  np.testing.assert_array_equal(conv.arrays["params/pos_embed"], sd["pos_embed"][:, 1:])


def big_vision_params(n_tokens):
  """Random weights named and shaped as big_vision's ViT (flax param names)."""
  hd = D // HEADS
  ps = {"embedding/kernel": _normal(P, P, 3, D, scale=0.2),
        "embedding/bias": _normal(D, scale=0.1),
        "pos_embedding": _normal(1, n_tokens, D, scale=0.1),
        "Transformer/encoder_norm/scale": RNG.uniform(0.5, 1.5, D).astype(np.float32),
        "Transformer/encoder_norm/bias": _normal(D, scale=0.1),
        "head/kernel": _normal(D, CLASSES, scale=0.2),
        "head/bias": _normal(CLASSES, scale=0.1)}
  for i in range(DEPTH):
    b = f"Transformer/encoderblock_{i}"
    for n in ("LayerNorm_0", "LayerNorm_1"):
      ps[f"{b}/{n}/scale"] = RNG.uniform(0.5, 1.5, D).astype(np.float32)
      ps[f"{b}/{n}/bias"] = _normal(D, scale=0.1)
    a = f"{b}/MultiHeadDotProductAttention_0"
    for n in ("query", "key", "value"):
      ps[f"{a}/{n}/kernel"] = _normal(D, HEADS, hd, scale=1 / math.sqrt(D))
      ps[f"{a}/{n}/bias"] = _normal(HEADS, hd, scale=0.1)
    ps[f"{a}/out/kernel"] = _normal(HEADS, hd, D, scale=1 / math.sqrt(D))
    ps[f"{a}/out/bias"] = _normal(D, scale=0.1)
    for n, (i_, o) in {"Dense_0": (D, MLP), "Dense_1": (MLP, D)}.items():
      ps[f"{b}/MlpBlock_0/{n}/kernel"] = _normal(i_, o, scale=1 / math.sqrt(i_))
      ps[f"{b}/MlpBlock_0/{n}/bias"] = _normal(o, scale=0.1)
  return ps


def big_vision_vit(image_nhwc, ps):
  """big_vision ViT, pool_type='gap', learned position embeddings."""
  b, hh, ww, c = image_nhwc.shape
  patches = image_nhwc.reshape(b, hh // P, P, ww // P, P, c).transpose(0, 1, 3, 2, 4, 5)
  x = np.einsum("bhwijc,ijcd->bhwd", patches, ps["embedding/kernel"])
  x = x.reshape(b, -1, D) + ps["embedding/bias"] + ps["pos_embedding"]
  hd = D // HEADS
  for i in range(DEPTH):
    p = lambda n: ps[f"Transformer/encoderblock_{i}/{n}"]  # noqa: E731
    a = "MultiHeadDotProductAttention_0"
    y = _layer_norm(x, p("LayerNorm_0/scale"), p("LayerNorm_0/bias"))
    q, k, v = (np.einsum("bnd,dhk->bnhk", y, p(f"{a}/{n}/kernel")) + p(f"{a}/{n}/bias")
               for n in ("query", "key", "value"))
    w = _softmax(np.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(hd))
    y = np.einsum("bhqt,bthk->bqhk", w, v)
    x = x + np.einsum("bqhk,hkd->bqd", y, p(f"{a}/out/kernel")) + p(f"{a}/out/bias")
    y = _layer_norm(x, p("LayerNorm_1/scale"), p("LayerNorm_1/bias"))
    y = y @ p("MlpBlock_0/Dense_0/kernel") + p("MlpBlock_0/Dense_0/bias")
    y = 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    x = x + y @ p("MlpBlock_0/Dense_1/kernel") + p("MlpBlock_0/Dense_1/bias")
  x = _layer_norm(x, ps["Transformer/encoder_norm/scale"],
                  ps["Transformer/encoder_norm/bias"]).mean(axis=1)
  return x @ ps["head/kernel"] + ps["head/bias"]


def test_big_vision_vit_weights_give_big_visions_logits():
  image = _normal(2, 16, 16, 3)
  ps = big_vision_params((16 // P)**2)
  model = _vit("gelu_tanh")  # big_vision's nn.gelu: the tanh approximation
  tree = _init(model, jnp.asarray(image))
  conv = name_maps.convert({f"params/{k}": v for k, v in ps.items()},
                           name_maps.BIG_VISION_VIT, variables.shapes(tree))
  assert not (conv.missing or conv.unexpected or conv.mismatched or conv.dropped)
  ours = _logits(model, tree, conv.arrays, jnp.asarray(image))
  want = big_vision_vit(image.astype(np.float64), ps)
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)


def test_big_vision_missing_value_projection_leaves_qkv_missing():
  ps = big_vision_params((16 // P)**2)
  del ps["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/value/kernel"]
  tree = _init(_vit("gelu_tanh"), jnp.zeros((1, 16, 16, 3)))
  conv = name_maps.convert(ps, name_maps.BIG_VISION_VIT, variables.shapes(tree))
  assert conv.missing == ["params/block1/attn/qkv/kernel"]
  assert not (conv.unexpected or conv.mismatched)
