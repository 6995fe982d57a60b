"""Every error kmscli can report, each tied to its exit code: the only such table.

Code below the CLI raises these; ``cli/app.py`` turns them into one stderr line
``kmscli: <ExceptionName>: <message>`` and the exit code. Errors are matched by
type, never by message text. AWS exception names are kept where AWS has one, so
an HTTP adapter can put ``error.name`` on the wire unchanged.
"""

from __future__ import annotations

# Exit codes (SPEC "Exit codes").
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STATE = 4
EXIT_UNLOCK = 5
EXIT_CIPHERTEXT = 6
EXIT_DENIED = 7
EXIT_FILE = 8
EXIT_EXISTS = 9
#: A KMS refused the caller's credentials (SPEC: remote mode). ``kmscli serve``
#: raises the authentication errors below, which its clients then see.
EXIT_REMOTE = 10


class KmsError(Exception):
    """Base of every error kmscli reports on purpose."""

    exit_code = EXIT_INTERNAL
    #: Name printed and logged; AWS's exception name where there is one.
    name = "KMSInternalException"

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        full = f"{message}; {hint}" if hint else message
        super().__init__(full)
        #: What a person reads (the CLI's line, the audit record): AWS's words, then what to do next.
        self.message = full
        #: AWS's words only: what `kmscli serve` answers an SDK, for which a kmscli command is no help.
        self.aws_message = message

    def __str__(self) -> str:
        return self.message


class KMSInternalException(KmsError):
    exit_code = EXIT_INTERNAL
    name = "KMSInternalException"


class EditorException(KmsError):
    """``kmscli edit``: the editor failed, or was quit with an error (vim's ``:cq``); nothing was written.

    Exit 1, as git and crontab end when their editor fails: not a usage error,
    and the file is as it was.
    """

    exit_code = EXIT_INTERNAL
    name = "EditorException"


# -- 2: usage and validation ------------------------------------------------
class ValidationException(KmsError):
    exit_code = EXIT_USAGE
    name = "ValidationException"


class SerializationException(KmsError):
    """A request member of the wrong JSON type (a number where a string belongs, bad base64, ...).

    AWS's JSON 1.1 front end answers these before validating any constraint:
    see ``kmscli/shapes.py``.
    """

    exit_code = EXIT_USAGE
    name = "SerializationException"


class MalformedPolicyDocumentException(KmsError):
    exit_code = EXIT_USAGE
    name = "MalformedPolicyDocumentException"


class LimitExceededException(KmsError):
    exit_code = EXIT_USAGE
    name = "LimitExceededException"


class TagException(KmsError):
    exit_code = EXIT_USAGE
    name = "TagException"


class InvalidAliasNameException(KmsError):
    exit_code = EXIT_USAGE
    name = "InvalidAliasNameException"


class NotAuthorizedException(KmsError):
    """AWS's answer to names under the reserved ``alias/aws/`` prefix."""

    exit_code = EXIT_USAGE
    name = "NotAuthorizedException"


class InvalidArnException(KmsError):
    exit_code = EXIT_USAGE
    name = "InvalidArnException"


class InvalidMarkerException(KmsError):
    """A paging ``Marker`` that no earlier answer of this operation gave."""

    exit_code = EXIT_USAGE
    name = "InvalidMarkerException"


class UnsupportedOperationException(KmsError):
    """An AWS operation (or an option of one) kmscli does not do yet."""

    exit_code = EXIT_USAGE
    name = "UnsupportedOperationException"


class InvalidGrantTokenException(KmsError):
    """A grant token that is not one this vault issued, or one of another key (SPEC: exit 2)."""

    exit_code = EXIT_USAGE
    name = "InvalidGrantTokenException"


class UnknownOperationException(KmsError):
    """A wire request naming no KMS operation (``X-Amz-Target``)."""

    exit_code = EXIT_USAGE
    name = "UnknownOperationException"


class UsageError(KmsError):
    """Local I/O and option errors: unreadable ``-i``, unwritable ``-o``."""

    exit_code = EXIT_USAGE
    name = "ValidationException"


# -- 3: not found -----------------------------------------------------------
class NotFoundException(KmsError):
    exit_code = EXIT_NOT_FOUND
    name = "NotFoundException"


# -- 4: wrong state ---------------------------------------------------------
class DisabledException(KmsError):
    exit_code = EXIT_STATE
    name = "DisabledException"


class InvalidKeyUsageException(KmsError):
    exit_code = EXIT_STATE
    name = "InvalidKeyUsageException"


class KMSInvalidStateException(KmsError):
    exit_code = EXIT_STATE
    name = "KMSInvalidStateException"


class ExpiredImportTokenException(KmsError):
    """ImportKeyMaterial with an import token (and wrapping key) older than its 24 hours."""

    exit_code = EXIT_STATE
    name = "ExpiredImportTokenException"


# -- 5: cannot unlock -------------------------------------------------------
class UnlockError(KmsError):
    exit_code = EXIT_UNLOCK
    name = "UnlockException"


class IncorrectPassphraseException(UnlockError):
    name = "IncorrectPassphraseException"


class PassphraseRequiredException(UnlockError):
    name = "PassphraseRequiredException"


class InvalidSessionException(UnlockError):
    name = "InvalidSessionException"


class RootKeyUnavailableException(UnlockError):
    """The remote KMS holding the vault's root key refused to unwrap it (access revoked, key disabled or
    deleted, blob not its own): the vault stays locked. ``remote`` is the KMS's exception name."""

    name = "RootKeyUnavailableException"

    def __init__(self, message: str = "", *, hint: str | None = None, remote: str = "") -> None:
        super().__init__(message, hint=hint)
        self.remote = remote


class SessionAgentException(UnlockError):
    """``unlock`` could not start (or reach) the agent that would hold the session."""

    name = "SessionAgentException"


# -- 6: ciphertext ----------------------------------------------------------
#: The one message for every ciphertext that does not decrypt. It never says
#: which check failed: telling a tampered tag from a wrong context would hand
#: an attacker an oracle.
INVALID_CIPHERTEXT_MESSAGE = (
    "the ciphertext cannot be decrypted: it was modified or truncated, the "
    "encryption context differs from the one used to encrypt, it was made "
    "under another key than the one asked for (--key, KeyId), or its key is "
    "not in this vault (destroyed, from another vault, or of another region)"
)


class InvalidCiphertextException(KmsError):
    exit_code = EXIT_CIPHERTEXT
    name = "InvalidCiphertextException"

    def __init__(self, message: str = INVALID_CIPHERTEXT_MESSAGE, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class IncorrectKeyException(InvalidCiphertextException):
    name = "IncorrectKeyException"


class InvalidImportTokenException(KmsError):
    """An import token that is not one GetParametersForImport issued for this key and has not been used yet."""

    exit_code = EXIT_CIPHERTEXT
    name = "InvalidImportTokenException"


class IncorrectKeyMaterialException(KmsError):
    """Key material imported into a key that holds (or held) other material: only the same may come back."""

    exit_code = EXIT_CIPHERTEXT
    name = "IncorrectKeyMaterialException"


# AWS answers both with an empty message; the CLI says what may differ.
INVALID_SIGNATURE_MESSAGE = (
    "the signature is not valid: the message, the signature, the key or the signing algorithm "
    "differs from the one that made it, or the message type (RAW, DIGEST) says otherwise"
)
INVALID_MAC_MESSAGE = (
    "the MAC is not valid: the message, the MAC, the key or the MAC algorithm differs from the one that made it"
)


class KMSInvalidSignatureException(KmsError):
    exit_code = EXIT_CIPHERTEXT
    name = "KMSInvalidSignatureException"

    def __init__(self, message: str = INVALID_SIGNATURE_MESSAGE, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


class KMSInvalidMacException(KmsError):
    exit_code = EXIT_CIPHERTEXT
    name = "KMSInvalidMacException"

    def __init__(self, message: str = INVALID_MAC_MESSAGE, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)


# -- 7: denied --------------------------------------------------------------
class AccessDeniedException(KmsError):
    exit_code = EXIT_DENIED
    name = "AccessDeniedException"


# -- 8: vault or audit file -------------------------------------------------
class VaultFileError(KmsError):
    exit_code = EXIT_FILE
    name = "VaultFileException"


class VaultNotFoundException(VaultFileError):
    name = "VaultNotFoundException"


class VaultCorruptException(VaultFileError):
    name = "VaultCorruptException"


class VaultVersionException(VaultFileError):
    name = "UnsupportedVaultVersionException"


class AuditLogException(VaultFileError):
    name = "AuditLogException"


class AuditVerificationException(VaultFileError):
    name = "AuditVerificationException"


class VaultRollbackException(VaultFileError):
    """``vault restore`` refused: what is in place may be newer than the backup (restoring it needs --force)."""

    name = "VaultRollbackException"


# -- 9: already exists ------------------------------------------------------
class AlreadyExistsException(KmsError):
    exit_code = EXIT_EXISTS
    name = "AlreadyExistsException"


# -- 10: credentials refused (SigV4) -----------------------------------------
# Raised by ``kmscli serve`` when a request's signature does not authenticate
# it; a client (remote mode included) sees them as a KMS refusing its credentials.
class MissingAuthenticationTokenException(KmsError):
    """The request is not signed: no SigV4 Authorization header, or no date."""

    exit_code = EXIT_REMOTE
    name = "MissingAuthenticationTokenException"


class UnrecognizedClientException(KmsError):
    """The access key id in the signature is unknown."""

    exit_code = EXIT_REMOTE
    name = "UnrecognizedClientException"


class InvalidSignatureException(KmsError):
    """The signature is malformed, wrong, scoped elsewhere or too far from now."""

    exit_code = EXIT_REMOTE
    name = "InvalidSignatureException"


#: AWS exception name -> exit code, as the SPEC's table lists it. Derived from
#: the classes above so that there is one source of truth.
EXIT_CODES: dict[str, int] = {
    cls.name: cls.exit_code
    for cls in (
        KMSInternalException,
        ValidationException,
        SerializationException,
        MalformedPolicyDocumentException,
        LimitExceededException,
        TagException,
        InvalidAliasNameException,
        NotAuthorizedException,
        InvalidArnException,
        InvalidMarkerException,
        UnsupportedOperationException,
        InvalidGrantTokenException,
        UnknownOperationException,
        InvalidKeyUsageException,
        NotFoundException,
        DisabledException,
        KMSInvalidStateException,
        ExpiredImportTokenException,
        InvalidCiphertextException,
        IncorrectKeyException,
        InvalidImportTokenException,
        IncorrectKeyMaterialException,
        KMSInvalidSignatureException,
        KMSInvalidMacException,
        AccessDeniedException,
        AlreadyExistsException,
    )
}
