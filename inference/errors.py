"""A small error hierarchy; servers map these to HTTP status codes in one place."""


class RtdetectError(Exception):
    """Base class for every error rtdetect raises on purpose."""


class ModelLoadError(RtdetectError):
    """The model files are missing, corrupt or do not match their spec."""


class BackendUnavailableError(ModelLoadError):
    """The chosen engine backend cannot run here (library or GPU missing)."""


class InvalidImageError(RtdetectError):
    """The bytes are not a decodable image of a supported type."""


class UnsupportedImageTypeError(InvalidImageError):
    """A real image, but of a type we do not accept."""


class ImageTooLargeError(InvalidImageError):
    """The image declares more pixels than the configured limit."""


class InferenceError(RtdetectError):
    """The engine failed while running a batch."""


class EngineUnavailableError(InferenceError):
    """A remote engine (Triton) cannot be reached or did not answer in time: retry later."""


class OverloadedError(RtdetectError):
    """The batcher's queue is full; the caller should retry later."""
