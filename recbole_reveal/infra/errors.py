"""Errors caused by the user's input (names, files, config); the CLI prints them without a traceback."""


class RevealUserError(Exception):
    """Base class: the message names the file or key and what was expected."""


class UnknownModelError(RevealUserError, ValueError):
    pass


class DatasetNotFoundError(RevealUserError, FileNotFoundError):
    pass


class FeatureFileError(RevealUserError, ValueError):
    pass


class ConfigError(RevealUserError, ValueError):
    pass


class ModelContractError(RevealUserError, AttributeError, NotImplementedError, ValueError):
    """A backbone breaks REVEAL's contract (``vision_modules``, ``mask_modality``): the message names the
    model, the mistake and the fix. (Also the built-in types these checks raised before.)"""


class EncoderUnavailable(RevealUserError, RuntimeError):
    """A feature encoder's package or weight folder is missing; the message says how to get it."""


class DataFileError(RevealUserError, ValueError):
    """An atomic file (``.inter``, ``.item``, ...) that cannot be read: names the file and line."""


class CheckpointError(RevealUserError, ValueError):
    """A checkpoint that cannot be loaded safely (``weights_only=True``) or does not fit the run."""


class FolderInUseError(RevealUserError, RuntimeError):
    """Another run holds the lock of a folder this run would write (see ``recbole_reveal.infra.files``)."""


USER_ERRORS = (RevealUserError,)


def exit_status(main, argv=None):
    """``main(argv)`` as a command's exit status: 0, or 2 with a user error printed as one ``error:`` line on
    stderr (the ``python -m`` entry points of the feature extractor and the prompts)."""
    import sys

    try:
        main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
