"""Error types users can catch. Every message names the problem and the fix."""


class FerEdgeError(Exception):
    """Base class of all fer-edge errors."""


class ContractError(FerEdgeError, ValueError):
    """An artifact's preprocessing contract is missing, malformed or inconsistent."""


class ModelLoadError(FerEdgeError, RuntimeError):
    """A model file is missing, unreadable, corrupt or of an unknown kind."""


class BackendUnavailableError(FerEdgeError, RuntimeError):
    """The backend an artifact needs (ONNX Runtime, TensorRT, CUDA) is not installed or has no device."""


class DataError(FerEdgeError, ValueError):
    """A dataset, image folder or calibration source cannot be read as asked."""


class InputError(FerEdgeError, ValueError):
    """Faces, a frame or a face box passed to predict()/crop_face() that cannot be read unambiguously."""


class IntegrityWarning(UserWarning):
    """An artifact loaded without a size/sha256 check (no sidecar, or a sidecar that records no hash)."""
