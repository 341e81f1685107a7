"""Study (b): ResNet-50 on ImageNet, momentum vs LARS at batch sizes 1k ... 64k.

Steps to 75.9% top-1 (the MLPerf ResNet-50 target) at batch sizes 1,024 ... 65,536
for two recipes, each scaled by the linear rule with gradual warmup:

  momentum  Goyal et al. 2017 (arXiv 1706.02677): SGD with momentum 0.9, LR 0.1 per
            256 images scaled linearly, 5 warmup epochs, L2 1e-4 on the kernels;
            cosine decay over the budget in place of the paper's epoch-30/60/80
            steps (a schedule in epochs cannot be one config at every batch size).
  lars      You et al. 2017 (arXiv 1708.03888) in the MLPerf v0.6 TPU form (Kumar et
            al. 2019, arXiv 1909.09756): LARS momentum 0.9, trust coefficient 1e-3,
            eps 1e-5, weight decay 1e-4 inside the trust ratio, BN and biases
            excluded; the MLPerf polynomial schedule (power 2 down to 1e-4) after
            warmup; LR 31.2 at 32,768 images, i.e. 0.24375 per 256.

Both: label smoothing 0.1, bfloat16 compute, a budget of 90 epochs, evaluation every
epoch. Batch norm uses statistics over the whole batch (`bn_group_size` None) so
that every batch size of the grid normalizes over enough images on any slice
(Goyal et al. used 32 per worker: set `model.bn_group_size` for a fixed slice).
MLPerf v0.6 warmed LARS up for 25 epochs at 32k: add it as a warmup option with
`--config.study.warmup_epochs="(5.0, 25.0)"`.

On a pod, ImageNet prepared as ArrayRecord (tpu/README.md), the same command on
every worker at once (`tpu/run.sh` starts `jaxtrain train`; start a sweep the same
way, e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`). The
results directory is local to each worker; process 0 writes it:

    jaxtrain sweep --config=experiments/scaling/resnet50_imagenet.py \
        --workdir=$HOME/studies/r50 --config.data.data_dir=gs://BUCKET/tfds

Here, end to end at toy size on synthetic images (`:runlocal`: 32x32 crops, batch
sizes 8 and 16, 3 steps per trial):

    jaxtrain sweep --config=experiments/scaling/resnet50_imagenet.py:runlocal \\
        --config.data.source=synthetic --workdir=/tmp/r50_study

The full grid also runs on synthetic data (`--config.data.source=synthetic`, 224x224
noise of 1,000 classes) for pipeline and compile checks; shrink its budget with
`--config.study.batch_sizes=...`, `--config.study.max_steps=...`.
"""
import ml_collections

from jaxtrain.config import base_config
from jaxtrain import presets
from jaxtrain.study.grid import study_defaults

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  """The pod study; `arg="runlocal"` shrinks it to run here in minutes."""
  runlocal = presets.is_runlocal(arg)
  c = base_config()
  c.seed = 0
  c.model.name = "resnet50"
  c.model.bn_group_size = None
  c.model.zero_init_last_bn = True
  presets.imagenet(c.data)
  c.data.synthetic.num_examples = IMAGENET_TRAIN_IMAGES  # same epochs -> steps
  c.train.eval_batch_size = 4096
  c.loss.label_smoothing = 0.1
  c.precision.compute_dtype = "bfloat16"
  c.checkpoint.every = 0
  c.train.diagnostics = True  # update norms, trust ratios (README)

  s = study_defaults()
  s.batch_sizes = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
  s.optimizers = ("momentum", "lars")
  s.optimizer_configs = ml_collections.ConfigDict(dict(
      momentum=dict(name="momentum", learning_rate=0.1, momentum=0.9, l2=1e-4,
                    schedule=dict(name="warmup_cosine")),
      lars=dict(name="lars", learning_rate=0.24375, momentum=0.9,
                trust_coefficient=0.001, eps=1e-5, weight_decay=1e-4,
                schedule=dict(name="mlperf_polynomial", power=2.0,
                              end_value=1e-4)),
  ))
  s.base_batch_size = 256
  s.lr_rule = "linear"
  s.warmup_epochs = (5.0,)
  s.seeds = (0,)
  s.target = "eval/accuracy >= 0.759"
  s.eval_every_epochs = 1.0
  s.max_epochs = 90.0
  s.max_steps = 10_000_000
  c.study = s
  if runlocal:
    _runlocal(c)
  return c


def _runlocal(c) -> None:
  """Same model, optimizers and schedules at toy size (data source unchanged)."""
  c.data.synthetic.image_shape = (40, 40, 3)
  c.data.synthetic.num_classes = 10
  c.data.synthetic.num_examples = 64
  c.data.image_shape = (32, 32, 3)
  c.data.train_transforms = "decode|random_resized_crop(32)|flip|normalize"
  c.data.eval_transforms = "decode|center_crop(32, crop_ratio=0.875)|normalize"
  c.data.num_workers = 0
  c.train.eval_batch_size = 32
  c.precision.compute_dtype = "float32"
  s = c.study
  s.batch_sizes = (8, 16)
  s.warmup_epochs = (0.5,)
  s.max_epochs = 0.0
  s.max_steps = 3
  s.eval_every = 3  # steps, instead of eval_every_epochs (back to its default)
  s.eval_every_epochs = study_defaults().eval_every_epochs
