"""Starting from published weights: read a file, map its names, load the arrays.

`files.read_arrays` reads a `.npz` / `.safetensors` file; `name_maps.convert` maps
its names and layouts onto a model's variables (`variables.shapes`) with a shipped
map (`name_maps.NAME_MAPS`: torchvision/timm ResNets, timm and big_vision ViTs) and
reports what was loaded, missing, unexpected, mismatched or dropped;
`variables.replace` puts the arrays in.
"""
from jaxtrain.pretrained import files, name_maps, variables

__all__ = ["files", "name_maps", "variables"]
