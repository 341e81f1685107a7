"""Merging converted weights into a fresh model: loaded, re-initialized, refused."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import models
from jaxtrain.errors import ConfigError
from jaxtrain.pretrained import merge, name_maps, variables
from test_name_maps import torchvision_state_dict  # pylint: disable=g-import-not-at-top


def _fresh():
  model = models.get_model("resnet18", num_classes=10)
  return model.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), train=False)


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.linen.meta.unbox(tree), sep="/")


def test_an_imagenet_resnet18_into_ten_classes_with_a_new_head():
  sd = torchvision_state_dict(18, num_classes=1000)
  fresh = _fresh()
  conv = name_maps.convert(sd, name_maps.RESNET, variables.shapes(fresh))
  merged, report = merge.merge(fresh, conv, reinit="^params/head/", strict=True)
  assert report.reinitialized == ["params/head/bias", "params/head/kernel"]
  assert not (report.missing or report.mismatched or report.unexpected)
  got, before = _flat(merged), _flat(fresh)
  assert sorted(report.loaded) == sorted(set(got) - set(report.reinitialized))
  # Every loaded tensor is the source's, in jaxtrain's layout (independently here).
  np.testing.assert_array_equal(got["params/stem_conv/kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["batch_stats/stage2_block0/proj_bn/var"],
                                sd["layer2.0.downsample.1.running_var"])
  np.testing.assert_array_equal(got["params/stage4_block1/bn2/scale"],
                                sd["layer4.1.bn2.weight"])
  for path in report.reinitialized:
    np.testing.assert_array_equal(got[path], before[path])
  assert report.lines()[0].startswith(f"init_from: {len(report.loaded)} variables "
                                      "loaded, 2 re-initialized, 0 missing")


def test_strict_refuses_the_head_it_cannot_load_and_names_it():
  sd = torchvision_state_dict(18, num_classes=1000)
  fresh = _fresh()
  conv = name_maps.convert(sd, name_maps.RESNET, variables.shapes(fresh))
  with pytest.raises(ConfigError, match=r"^config.init_from.strict=True: fc.weight has "
                     r"shape \(1000, 512\), params/head/kernel needs \(512, 10\) "
                     r"\(2 such\); re-initialize"):
    merge.merge(fresh, conv, strict=True)
  merged, report = merge.merge(fresh, conv)  # not strict: what fits loads
  assert report.missing == []  # the head is in the source, with another shape
  assert [m[1] for m in report.mismatched] == ["params/head/kernel", "params/head/bias"]
  assert any(line.startswith("  shape mismatch: fc.weight (1000, 512) -> "
                             "params/head/kernel (512, 10)") for line in report.lines())
  np.testing.assert_array_equal(_flat(merged)["params/head/kernel"],
                                _flat(fresh)["params/head/kernel"])
