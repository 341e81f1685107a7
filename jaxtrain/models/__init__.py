"""Models: Flax linen classifiers looked up by name.

Every model takes ``num_classes`` plus options (``dtype`` = compute dtype,
``param_dtype``), inputs NHWC float images (the MLP flattens), and returns float32
logits::

  model = get_model("resnet50", num_classes=1000, bn_group_size=8)
  variables = model.init(rng, images, train=False)
  logits, updates = model.apply(variables, images, train=True,
                                mutable=["batch_stats"], rngs={"dropout": rng})

Models with batch norm (ResNets; CNN with ``use_bn=True``) keep ``batch_stats`` and
must be applied with ``mutable=["batch_stats"]`` when ``train=True``.

Config: ``config.model.name`` is a registered name (`model_names()`), the other keys
are the model's options: `model_kwargs(name)` lists them with their defaults
(`REQUIRED` for ``num_classes``) and `check_model_config(name, kwargs)` raises a
`ConfigError` naming ``model.<key>`` for unknown or missing options.

Logical axes. Parameters are created with ``nn.with_logical_partitioning``, so
``model.init`` returns them boxed in ``nn.LogicallyPartitioned``:
``nn.get_partition_spec(variables)`` gives the logical spec tree and
``nn.logical_to_mesh_sharding(specs, mesh, rules)`` the shardings; ``nn.meta.unbox(
variables)`` gives plain arrays (``apply`` accepts both). Names used:

  =============  ===================================================  ================
  logical name   where                                                suggested rule
  =============  ===================================================  ================
  batch          axis 0 of inputs and pooled features (activations)   ("data", "fsdp")
  conv_height    conv kernel axis 0                                   None
  conv_width     conv kernel axis 1                                   None
  conv_in        conv kernel input channels                           None
  conv_out       conv kernel output channels, conv bias               "fsdp"
  embed          dense kernel input (MLP: alternates with mlp)        "fsdp"
  mlp            dense hidden units (kernel output, bias)             "model"
  classes        head kernel output and head bias                     None
  norm           batch-norm scale and bias                            None
  =============  ===================================================  ================

Batch-norm running statistics (``batch_stats``) carry no names: they are replicated.
Activation constraints apply only to the batch axis and are no-ops unless rules are
active (``nn.logical_axis_rules``) under a mesh.
"""
from jaxtrain.models.cifar import CifarResNet, WideResNet
from jaxtrain.models.cnn import CNN
from jaxtrain.models.mlp import MLP
from jaxtrain.models.registry import (
    REQUIRED, check_model_config, get_model, model_kwargs, model_names, register)
from jaxtrain.models.resnet import (
    ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152)
from jaxtrain.models.vit import ViT  # noqa: F401  (registers "vit")

__all__ = [
    "CifarResNet", "CNN", "MLP", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101",
    "ResNet152", "REQUIRED", "check_model_config", "get_model", "model_kwargs",
    "model_names", "register", "WideResNet",
]
