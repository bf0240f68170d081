"""Registration of the longattn family with transformers' Auto classes, without importing transformers early.

``import longattn_cli`` must make ``AutoConfig`` / ``AutoModel*`` / ``pipeline("fill-mask")`` know
``model_type = "longattn"``, yet importing transformers and torch costs seconds that ``longattn --help`` should
not pay. So the registration runs as soon as transformers' auto modules are fully imported: at once when they
already are, otherwise right after they finish importing (a meta-path finder wraps their loaders; nothing else
is touched). Each step waits for the modules it needs, so the order in which transformers imports them does
not matter.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"
MODELING_UTILS = "transformers.modeling_utils"


def _register_config() -> None:
    from transformers import AutoConfig

    from longattn_cli.models.configuration import LongAttnConfig

    AutoConfig.register("longattn", LongAttnConfig, exist_ok=True)


def _register_models() -> None:
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    from longattn_cli.models import modeling as m

    AutoModel.register(m.LongAttnConfig, m.LongAttnModel, exist_ok=True)
    AutoModelForMaskedLM.register(m.LongAttnConfig, m.LongAttnForMaskedLM, exist_ok=True)
    AutoModelForPreTraining.register(m.LongAttnConfig, m.LongAttnForReplacedTokenDetection, exist_ok=True)
    AutoModelForSequenceClassification.register(
        m.LongAttnConfig, m.LongAttnForSequenceClassification, exist_ok=True
    )
    AutoModelForTokenClassification.register(
        m.LongAttnConfig, m.LongAttnForTokenClassification, exist_ok=True
    )


# (what to run, the modules that must be fully imported first), in order; done ones are removed.
_PENDING = [
    (_register_config, (CONFIG_AUTO,)),
    (_register_models, (CONFIG_AUTO, MODELING_UTILS, MODELING_AUTO)),
]
_WATCHED = {CONFIG_AUTO, MODELING_AUTO, MODELING_UTILS}


def _ready(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


OURS = ("longattn_cli.models.configuration", "longattn_cli.models.modeling")


def _run_ready(finished: str | None = None) -> None:
    """Run the registrations whose modules are loaded, unless one of ours is itself still importing (it
    calls this again, as ``finished``, when its body has run)."""
    if any(n in sys.modules and n != finished and not _ready(n) for n in OURS):
        return
    while _PENDING and all(_ready(n) for n in _PENDING[0][1]):
        step, _ = _PENDING.pop(0)
        step()
    if not _PENDING and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _Loader(importlib.abc.Loader):
    """The module's own loader, then whatever registration became possible."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        module.__spec__._initializing = False  # finished: let _ready() see it so
        _run_ready()

    def __getattr__(self, name):  # get_source, get_filename, is_package, ... as the real loader
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Register now what transformers already allows, and the rest as soon as it is imported."""
    _run_ready()
    if _PENDING and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def module_loaded(name: str) -> None:
    """Called at the end of our configuration and modeling modules: registrations that waited for them."""
    _run_ready(finished=name)
