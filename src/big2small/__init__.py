"""big2small: make trained neural networks small without their training data.

    import big2small as b2s
    loaded = b2s.load_model("smollm2")                       # or an HF dir, a .gguf, a .safetensors
    cm = b2s.compress(loaded, "uniform", bits=4, group_size=64)
    print(cm.size().bpw_all)
    b2s.save(cm, "smollm2-4bit.b2s")
    model = b2s.restore("smollm2-4bit.b2s")                  # rebuilt from the artifact alone
    b2s.decompress("smollm2-4bit.b2s", "dense.safetensors")  # no model class needed
"""

from big2small.artifact import decompress, load, read_manifest, save
from big2small.compress import CompressedModel, SizeReport, compress, make_recipe
from big2small.errors import Big2SmallError
from big2small.generators import GeneratorConfig
from big2small.models import LoadedModel, ModelSource, load_model
from big2small.recipe import Override, Recipe
from big2small.restore import restore
from big2small.version import __version__

__all__ = [
    "Big2SmallError", "CompressedModel", "GeneratorConfig", "LoadedModel", "ModelSource", "Override",
    "Recipe", "SizeReport", "compress", "decompress", "load", "load_model", "make_recipe", "read_manifest",
    "restore", "save", "__version__",
]
