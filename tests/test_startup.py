"""`import longattn_cli` is cheap and still registers the Auto classes, whatever order the imports come in."""

import subprocess
import sys

import pytest

ORDERS = {
    "ours first, then transformers' Auto classes": "import longattn_cli\nfrom transformers import AutoConfig, AutoModelForMaskedLM",
    "ours first, then our model module": "import longattn_cli\nfrom longattn_cli.models.modeling import LongAttnForMaskedLM\nfrom transformers import AutoConfig, AutoModelForMaskedLM",
    "transformers first": "from transformers import AutoConfig, AutoModelForMaskedLM\nimport longattn_cli",
    "the pipeline only": "import longattn_cli\nfrom transformers import pipeline\nfrom transformers import AutoConfig, AutoModelForMaskedLM",
}
CHECK = """
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING
from longattn_cli.models.modeling import LongAttnConfig, LongAttnForMaskedLM
assert CONFIG_MAPPING["longattn"] is LongAttnConfig
assert MODEL_FOR_MASKED_LM_MAPPING[LongAttnConfig] is LongAttnForMaskedLM
"""


@pytest.mark.parametrize("order", list(ORDERS))
def test_auto_classes_are_registered_in_any_import_order(order):
    done = subprocess.run([sys.executable, "-c", ORDERS[order] + CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_the_package_and_the_cli_loads_no_torch_or_transformers():
    code = (
        "import sys, longattn_cli, longattn_cli.cli, longattn_cli.training.config, longattn_cli.attention\n"
    )
    code += (
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_readme_names_keep_working():
    import longattn_cli
    from longattn_cli.checkpoints import export_roberta, load_model  # the path earlier READMEs showed
    from longattn_cli.models import checkpoints

    assert longattn_cli.load_model is load_model is checkpoints.load_model
    assert longattn_cli.export_roberta is export_roberta is checkpoints.export_roberta
