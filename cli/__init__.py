"""The click layer of impsamp, installed as the `impsamp_cli` package."""
