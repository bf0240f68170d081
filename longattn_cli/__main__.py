"""``python -m longattn_cli`` (and ``accelerate launch -m longattn_cli``) run the ``longattn`` command line."""

from longattn_cmd.cli import main

if __name__ == "__main__":
    main()
