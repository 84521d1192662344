"""``python -m innerdist``: the command line (how cluster workers are started)."""

from innerdist.cli import main

if __name__ == "__main__":
    main()
