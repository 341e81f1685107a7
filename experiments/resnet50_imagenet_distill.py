"""Knowledge distillation on ImageNet: a trained teacher's softened outputs teach a student.

Source. Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
arXiv 1503.02531: the student minimises

    weight * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))
        + (1 - weight) * cross_entropy(z_student, label)

(`config.loss.name = "distillation"`, `jaxtrain.losses.distillation`). The ImageNet
benchmark of Tian, Krishnan & Isola, "Contrastive Representation Distillation", 2019,
arXiv 1910.10699, Table 3, distils ResNet-34 (73.31% top-1) into ResNet-18 with the
torchvision schedule:

  teacher     ResNet-34, a finished run of this toolkit (`distill.teacher_workdir`),
              restored read-only and run in eval mode inside the student's step on
              the student's augmented images
  student     ResNet-18
  optimizer   SGD momentum 0.9, weight decay 1e-4 (L2 on weights), batch 256, LR 0.1
              divided by 10 at epochs 30 and 60, 90 epochs
  KD          temperature 4, weight 0.9 of the soft term (CRD's KD settings)
  input       Inception crop 224 + flip; eval center crop 224 (ratio 0.875)

Published (CRD Table 3, top-1): student alone 69.76%, KD 70.66%, teacher 73.31%.

Train the teacher first (this file's `:teacher` variant), then the student:

    jaxtrain train --config=experiments/resnet50_imagenet_distill.py:teacher \\
        --workdir=gs://B/r34_teacher
    jaxtrain train --config=experiments/resnet50_imagenet_distill.py \\
        --workdir=gs://B/r18_kd --config.distill.teacher_workdir=gs://B/r34_teacher

`:runlocal` trains a small teacher (ResNet-18, width 16) on synthetic images on a CPU;
`:runlocal_student` distils it into a ResNet-18 of width 8 (pass the teacher's workdir
as --config.distill.teacher_workdir). The file keeps
the name of the lectures' recipe zoo; set `--config.model.name=resnet50` and a
ResNet-101/152 teacher for the ResNet-50 version.
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

IMAGES = 1_281_167
BATCH = 256
VARIANTS = ("", "teacher", "runlocal", "runlocal_student")


def epoch_step(epoch: float) -> int:
  return math.ceil(epoch * IMAGES / BATCH)


def torchvision_schedule(c) -> None:
  """SGD momentum 0.9, wd 1e-4, LR 0.1 /10 at epochs 30 and 60, 90 epochs."""
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.learning_rate = 0.1
  c.optimizer.l2 = 1e-4
  c.optimizer.schedule.name = "piecewise"
  c.optimizer.schedule.boundaries = (epoch_step(30), epoch_step(60))
  c.optimizer.schedule.scales = (0.1, 0.1)
  c.train.batch_size = BATCH
  c.train.num_epochs = 90.0
  c.train.log_every = 200
  c.train.eval_every = epoch_step(5)
  c.checkpoint.every = epoch_step(5)


def get_config(arg=None):
  """Student (default), `teacher`, `runlocal` (tiny teacher), `runlocal_student`."""
  if (arg or "") not in VARIANTS:
    raise ValueError(f"get_config({arg!r}): variants are {VARIANTS[1:]}")
  c = base_config()
  presets.imagenet(c.data)
  torchvision_schedule(c)
  teacher = arg in ("teacher", "runlocal")
  c.model.name = "resnet34" if teacher else "resnet18"
  if not teacher:
    c.loss.name = "distillation"
    c.loss.temperature, c.loss.weight = 4.0, 0.9
    c.distill.teacher_model.name = "resnet34"
  if arg and arg.startswith("runlocal"):
    presets.synthetic_images(c.data, 32, num_examples=64, stored_size=40)
    c.data.train_transforms = "random_resized_crop(32)|flip|normalize"
    c.data.eval_transforms = "center_crop(32, crop_ratio=0.875)|normalize"
    # CPU size: a ResNet-18 teacher of width 16 and a student of width 8.
    presets.cpu_resnet(c.model, width=16 if teacher else 8)
    if not teacher:
      presets.cpu_resnet(c.distill.teacher_model, width=16)
    c.train.batch_size, c.train.num_epochs, c.train.num_steps = 16, 0.0, 6
    c.train.log_every, c.train.eval_every, c.checkpoint.every = 3, 0, 0
    c.optimizer.schedule.boundaries = (3, 5)
  return c
