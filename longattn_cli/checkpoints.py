"""Where ``load_model`` and ``export_roberta`` used to live (earlier READMEs show
``from longattn_cli.checkpoints import load_model``); the module is :mod:`longattn_cli.models.checkpoints`,
and ``from longattn_cli import load_model`` is the short form."""

from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.export import export_roberta
from longattn_cli.models.tokenizer import load_tokenizer

__all__ = ["export_roberta", "load_model", "load_tokenizer"]
