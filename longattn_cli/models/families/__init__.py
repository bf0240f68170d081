"""The foreign families longattn reads, one module each (config mapping, key map, quirks), and the registry
that picks one by the checkpoint's ``model_type``."""

from __future__ import annotations

from longattn_cli.models.families import albert, bert, distilbert, electra, nystromformer, roberta, yoso
from longattn_cli.models.families.common import Importer, family_fields

IMPORTERS: dict[str, Importer] = {
    "roberta": roberta.IMPORTER,
    "xlm-roberta": roberta.IMPORTER,
    "camembert": roberta.IMPORTER,
    "bert": bert.IMPORTER,
    "nystromformer": nystromformer.IMPORTER,
    "yoso": yoso.IMPORTER,
    "distilbert": distilbert.IMPORTER,
    "electra": electra.IMPORTER,
    "albert": albert.IMPORTER,
}


def supported_types() -> list[str]:
    """Every ``model_type`` longattn loads: its own and the registered families'."""
    return sorted(["longattn", *IMPORTERS])


__all__ = ["IMPORTERS", "Importer", "family_fields", "supported_types"]
