"""``python -m sparsekit``: the command line (see :mod:`sparsekit.cli`)."""

from sparsekit.cli import main

if __name__ == "__main__":
    main()
