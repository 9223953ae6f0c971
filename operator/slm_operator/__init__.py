"""slm-operator: run fleets of small language models on fractions of GPUs."""

__version__ = "0.1.0"

#: The trainer image of the same release (``Dockerfile.trainer``): the default of ``slm-operator run
#: --trainer-image``, which runs both steps of a FineTuneJob's pod (sanitize, train).
DEFAULT_TRAINER_IMAGE = f"ghcr.io/slm-operator/trainer:{__version__}"
