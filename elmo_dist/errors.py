"""The errors a user can cause (bad input, config, model, output); the CLI prints them in one line."""

from elmo_dist.checkpoint import ResumeError
from elmo_dist.config import ConfigError
from elmo_dist.lease import LeaseError
from elmo_dist.model.options import OptionsError
from elmo_dist.model.weights import WeightsError
from elmo_dist.output import OutputError
from elmo_dist.refresh import RefreshError
from elmo_dist.stages.read import InputError
from elmo_dist.storage import StorageError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, InputError, OptionsError, WeightsError, OutputError, ResumeError, PermissionError,
    FileNotFoundError, LeaseError, RefreshError, StorageError,
)
