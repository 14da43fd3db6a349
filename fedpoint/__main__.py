"""`python -m fedpoint`: the same as the `fedpoint` command."""

from fedpoint.cli import main

if __name__ == "__main__":
    main()
