"""The errors impsamp raises for bad input: the CLI prints them as one line, never a traceback."""


class ImpsampError(Exception):
    """Base of every error a user can fix: bad input, bad flags, an incomplete stage directory."""

    keeps_output = False
    """True where the run stopped for a reason outside its input and settings (a worker died, a read
    failed): a new run keeps what it committed, for the same command to resume
    (`StageRun.discarded_on_error`); bad input or settings leave nothing behind."""


def keeping_output(err: ImpsampError) -> ImpsampError:
    """`err`, marked as a stop outside the run's input: its committed output is kept."""
    err.keeps_output = True
    return err


def stopped_outside_input(err: BaseException) -> bool:
    """Whether a run that stopped on `err` keeps its committed output: `err` is marked so, or it (or an
    error it was raised while handling) is an operating-system read or write failure (an `OSError` with
    an errno, not a damaged or malformed file)."""
    seen: BaseException | None = err
    while seen is not None:
        if getattr(seen, "keeps_output", False) or (isinstance(seen, OSError) and seen.errno is not None):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ConfigError(ImpsampError):
    """A config value or flag is invalid or flags do not fit together."""


class CorpusError(ImpsampError):
    """A corpus file cannot be read: malformed line, missing field, bad encoding, unknown format."""


class StageError(ImpsampError):
    """A stage directory is missing, incomplete, of another stage, or does not belong to its inputs."""


class WeightingError(ImpsampError):
    """A weighting function failed or returned weights that cannot be sampled from."""


def a_or_an(word: str) -> str:
    """The article before `word` in a message ("an 'experts' output")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def upper_first(text: str) -> str:
    """`text` opening a sentence; not `str.capitalize`, which lowercases the rest ("4.46M" -> "4.46m")."""
    return text[:1].upper() + text[1:]
