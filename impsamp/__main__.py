"""`python -m impsamp ...` runs the CLI (torchrun uses this for multi-GPU training)."""

from impsamp_cli.main import main

if __name__ == "__main__":
    main()
