"""``python -m fsd.invert``: see `fsd.invert.cli`."""

from fsd.invert.cli import main

if __name__ == "__main__":
    main()
