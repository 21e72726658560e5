"""The models users bring, and the ones we bundle.

- `source`: ModelSource (where a model came from; stored in the manifest) and LoadedModel;
- `loaders`: Hugging Face directories, GGUF files, bare safetensors state_dicts;
- `zoo`: the bundled models ("smollm2", "minilm", "efficientnet-lite0", "fashion-resnet") and
  the factories that rebuild their skeletons;
- `tasks`: what each kind of model is measured by (one `Task` per kind);
- `load`: load_model(name or path) and build_skeleton(source).
"""

from big2small.models.load import build_skeleton, load_model, load_tokenizer_from
from big2small.models.source import LoadedModel, ModelSource, module_source
from big2small.models.tasks import TASKS, Task, get_task
from big2small.models.zoo import ZOO

__all__ = ["TASKS", "ZOO", "LoadedModel", "ModelSource", "Task", "build_skeleton", "get_task", "load_model",
           "load_tokenizer_from", "module_source"]
