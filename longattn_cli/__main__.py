"""``python -m longattn_cli`` (and ``accelerate launch -m longattn_cli``) run the CLI."""

from longattn_cli.cli import main

if __name__ == "__main__":
    main()
