"""Starting from published weights: read a file, map its names, load the arrays.

`files.read_arrays` reads a `.npz` / `.safetensors` file; `name_maps.convert` maps
its names and layouts onto a model's variables (`variables.shapes`) with a shipped
map (`name_maps.NAME_MAPS`: torchvision/timm ResNets, timm and big_vision ViTs) and
reports what was loaded, missing, unexpected, mismatched or dropped;
`merge.merge` loads them into a fresh model, keeping `init_from.reinit`'s matches
fresh, and reports every variable's outcome.
"""
from jaxtrain.pretrained import files, merge, name_maps, variables

__all__ = ["files", "merge", "name_maps", "variables"]
