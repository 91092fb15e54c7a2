"""``python -m wmdd SUBCOMMAND ...``: the same as ``wmdd SUBCOMMAND ...`` (:mod:`wmdd.cli`)."""

from wmdd.cli import main

if __name__ == "__main__":
    main()
