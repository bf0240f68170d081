"""``longattn --help`` starts without the library, torch or transformers; the library's import registers."""

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke

HEAVY = ("torch", "transformers", "datasets", "accelerate", "longattn_cli")


def test_the_command_line_starts_without_the_library_torch_or_transformers():
    code = (
        "import sys\nfrom longattn_cmd.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_installed_command_and_both_module_runs_answer_help():
    runs = [[shutil.which("longattn"), "--help"], [sys.executable, "-m", "longattn_cmd", "--help"]]
    runs.append([sys.executable, "-m", "longattn_cli", "--help"])  # accelerate launch -m longattn_cli
    for argv in runs:
        assert argv[0], "the longattn command is not installed (pip install -e .)"
        done = subprocess.run(argv, capture_output=True, text=True)
        assert done.returncode == 0 and "pretrain" in done.stdout, (argv, done.stderr[-2000:])


def test_the_readme_names_keep_working():
    import longattn_cli
    from longattn_cli.checkpoints import export_roberta, load_model  # the path earlier READMEs showed
    from longattn_cli.models import checkpoints, export

    assert longattn_cli.load_model is load_model is checkpoints.load_model
    assert longattn_cli.export_roberta is export_roberta is export.export_roberta
