"""Engine errors: each carries a message that names the problem and what to do."""


class EngineError(Exception):
    """A failure the user can act on; str(error) is shown as is, without a traceback."""


class SourceError(EngineError):
    """The source cannot be read: missing path, failed command, unreachable pod."""


class NoSpaceError(EngineError):
    """The destination has (or would have) no space left."""


class Cancelled(EngineError):
    """The run was cancelled (Ctrl-C, SIGTERM, a user, a timeout)."""


class ArchiveError(EngineError):
    """An archive is missing, truncated, corrupt or does not match its manifest."""


class UnsafeArchiveError(ArchiveError):
    """An archive tries to write outside its target or is larger than it claims."""


class UnsupportedFormatError(EngineError):
    """A manifest or archive was written by a newer version of this project."""


class FencedError(EngineError):
    """This worker no longer owns the run (it was declared abandoned): publish nothing."""


class TargetError(EngineError):
    """A restore target is unusable: not empty, not writable, on another filesystem."""


class StateFolderError(EngineError):
    """The workers' private state folder is unsafe: another user may write it, or owns it."""


class StorageError(EngineError):
    """A storage cannot be used: wrong credentials, missing bucket, unreachable endpoint."""


class MissingObjectError(StorageError):
    """An object (an archive, a sidecar, a manifest) is not in its storage."""


class KeyFileError(EngineError):
    """An age recipient or identity is malformed, or an identity file is unsafe or unreadable."""


class NoMatchingIdentityError(ArchiveError):
    """An encrypted archive cannot be opened with any identity (private key) at hand."""


class TruncatedArchiveError(ArchiveError):
    """An encrypted archive ends before its encrypted stream does."""


class AlteredArchiveError(ArchiveError):
    """An encrypted archive fails age's authentication: its bytes were changed."""


class NotEncryptedError(ArchiveError):
    """A file that should be age-encrypted does not start with an age header."""
