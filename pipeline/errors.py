"""Problems a user can fix. Each message names the file or parameter and what is wrong;
the command line prints it on one line instead of a traceback."""


class MedsegError(Exception):
    pass


class ConfigError(MedsegError):
    """A params file or value that cannot be used."""


class DatasetError(MedsegError):
    """A dataset that cannot be used as a whole."""


class ModelError(MedsegError):
    """A model file that cannot be used."""


class CheckpointError(MedsegError):
    """A training checkpoint that cannot be resumed from."""


class InputError(MedsegError):
    """An input path that names nothing to segment."""


class TrainingError(MedsegError):
    """A training run that went wrong (a NaN loss, diverged weights) and was stopped."""
