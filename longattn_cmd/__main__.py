"""``python -m longattn_cmd`` runs the ``longattn`` command line."""

from longattn_cmd.cli import main

if __name__ == "__main__":
    main()
