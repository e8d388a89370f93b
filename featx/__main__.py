"""``python -m featx``: the same command as ``featx``."""

from featx.cli import main

if __name__ == "__main__":
    main()
