"""The errors impsamp raises for bad input: the CLI prints them as one line, never a traceback."""


class ImpsampError(Exception):
    """Base of every error a user can fix: bad input, bad flags, an incomplete stage directory."""


class ConfigError(ImpsampError):
    """A config value or flag is invalid or flags do not fit together."""


class CorpusError(ImpsampError):
    """A corpus file cannot be read: malformed line, missing field, bad encoding, unknown format."""


class StageError(ImpsampError):
    """A stage directory is missing, incomplete, of another stage, or does not belong to its inputs."""


class WeightingError(ImpsampError):
    """A weighting function failed or returned weights that cannot be sampled from."""
