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


USER_ERRORS = (RevealUserError,)
