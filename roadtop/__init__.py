"""roadtop: fast.ai Lesson 7 ('Road to the Top') as a reusable Kaggle pipeline."""

import re
import warnings

__version__ = "0.1.0"

# Warnings about the libraries' own calls as they are imported, not about anything a learner wrote or can change:
# each is filtered by its message alone, here (for any process that imports roadtop first, as pipeline.py does) and,
# written as PYTHONWARNINGS entries, in the notebook kernels the pipeline starts (the CLI hands them on).
QUIET = (
    "ignore:`torch.jit.script` is deprecated",  # torch 2.9 deprecates it; fastai's layers.py and timm call it
    "ignore:The 'mode.chained_assignment' option is deprecated",  # pandas 3: fastai.tabular still sets it (no effect)
)
for _spec in QUIET:
    _action, _message = _spec.split(":", 1)
    warnings.filterwarnings(_action, re.escape(_message))
