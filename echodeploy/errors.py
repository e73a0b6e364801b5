"""Error hierarchy.

Bulk jobs record an `InputError` against the row that caused it and go on; every other
`EchodeployError` is infrastructure (no weights, no server, a broken repository) and stops
the run with one readable line.
"""

# Exit codes of every command: all rows ok; finished with row errors (see their status); failed
# (bad arguments, missing model, unreachable server); interrupted (rerun to resume).
EXIT_OK, EXIT_ITEM_ERRORS, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


class EchodeployError(Exception):
    """Anything the CLI reports as one line, without a traceback."""


class InputError(EchodeployError):
    """One input (video, DICOM, manifest row) cannot be used; `status` names the reason.

    The message is kept on one line (decoders report multi-line reasons): it lands in a CSV cell.
    """

    def __init__(self, message: str, status: str = "error"):
        super().__init__(" ".join(message.split()))
        self.status = status


class CheckpointError(EchodeployError):
    """A checkpoint file does not fit the network it is loaded into."""


class ExportError(EchodeployError):
    """An exported model failed validation against its source network."""


class BackendError(EchodeployError):
    """The inference backend (a model, a server) is missing, unreachable or mismatched."""


class RequestError(BackendError):
    """The backend refused one request (bad shape or dtype, model error); other requests go on."""
