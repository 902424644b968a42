"""``python -m privateshare.sandbox``."""

from .command import main

if __name__ == "__main__":
    main()
