"""``RemoteKms``: the KMS interface of the CLI, answered by a remote KMS through botocore.

Every method takes the AWS request members the vault's service takes and
returns the AWS response shape (aware datetimes, bytes), so a command prints
the same thing whichever KMS answered. Three kinds of method:

- most operations go to the remote KMS as they are (``_call``);
- ``Encrypt``, ``Decrypt`` and ``ReEncrypt`` stream locally in the AWS
  Encryption SDK's message format, one remote call per message for its data
  key (kmscli/envelope.py): gigabytes never cross the network;
- the views the CLI's tables use (``ListKeyDetails``, ``DescribeKeyDetails``)
  are composed from AWS operations; vault-only operations (the audit log,
  access keys, backups, ``--min-decrypt-version``) are refused with exit 2.

Retries and timeouts are botocore's, set for a command line: a dead endpoint
fails in seconds. Credentials and region come from botocore's usual chain.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, BinaryIO

from .. import errors

#: ``--endpoint aws``: AWS KMS itself, at the endpoint botocore resolves for the region.
AWS = "aws"
#: The region for a non-AWS endpoint when nothing configures one (a shared ``kmscli serve``).
FALLBACK_REGION = "us-east-1"
CONNECT_TIMEOUT_S = 3
#: A KMS answers in milliseconds; a server that accepted the connection and hung is given up on in seconds.
READ_TIMEOUT_S = 10
#: Attempts in all (botocore's "standard" retry mode backs off between them); AWS_MAX_ATTEMPTS overrides.
MAX_ATTEMPTS = 3
#: Error codes of a KMS that does not accept the caller's credentials or signature: exit 10.
CREDENTIAL_CODES = frozenset((
    "UnrecognizedClientException", "InvalidSignatureException", "MissingAuthenticationTokenException",
    "IncompleteSignature", "IncompleteSignatureException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "AuthFailure", "InvalidAccessKeyId",
))
#: Error codes of a KMS that is there but cannot answer now: exit 10 too.
UNAVAILABLE_CODES = frozenset((
    "ThrottlingException", "Throttling", "RequestLimitExceeded", "ServiceUnavailable",
    "ServiceUnavailableException", "InternalFailure", "KMSInternalException",
))
#: Operations of the vault alone: with an endpoint they are refused, naming what to do instead.
VAULT_ONLY = {
    "VerifyAuditLog": "the audit log is the vault's; a remote KMS keeps its own (AWS: CloudTrail)",
    "GetAuditHead": "the audit log is the vault's; a remote KMS keeps its own (AWS: CloudTrail)",
    "RestartAuditLog": "the audit log is the vault's; a remote KMS keeps its own (AWS: CloudTrail)",
    "CreateAccessKey": "access keys are the vault's, for its 'kmscli serve'; run it on the serving host",
    "ListAccessKeys": "access keys are the vault's, for its 'kmscli serve'; run it on the serving host",
    "DeleteAccessKey": "access keys are the vault's, for its 'kmscli serve'; run it on the serving host",
    "SetMinDecryptVersion": "--min-decrypt-version is kmscli's own rule, not an AWS KMS operation",
    "ChangePassphrase": "the passphrase is the vault's",
    "BackupVault": "backups are of the vault",
    "RestoreVault": "backups are of the vault",
}
_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?\Z")


class RemoteError(errors.KmsError):
    """An error the remote KMS (or the way to it) reported: its name, its words, the SPEC's exit code."""

    def __init__(self, name: str, message: str, exit_code: int, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.name = name
        self.exit_code = exit_code


def endpoint_from(option: str | None) -> str | None:
    """``--endpoint``, else ``KMSCLI_ENDPOINT``, checked; None when neither is set (the vault)."""
    value = option if option is not None else os.environ.get("KMSCLI_ENDPOINT")
    if value is None or value == "":
        return None
    if value != AWS and not _URL.match(value):
        raise errors.ValidationException(
            f"--endpoint must be 'aws' or an http(s) URL such as http://127.0.0.1:8080 (got {value!r})")
    return value


class RemoteKms:
    """One remote KMS, one region, one caller: botocore's credential chain."""

    def __init__(self, endpoint: str, region: str | None = None) -> None:
        self.endpoint = endpoint
        self._region = region
        self._clients: dict[str, Any] = {}
        #: ``--grant-token`` values, sent with every operation that takes GrantTokens.
        self.grant_tokens: tuple[str, ...] = ()

    # -- the connection ------------------------------------------------------
    @property
    def where(self) -> str:
        return "AWS KMS" if self.endpoint == AWS else self.endpoint

    def region(self) -> str:
        """``--region``/``KMSCLI_REGION``, else ``AWS_REGION``, else botocore's chain (AWS_DEFAULT_REGION, the
        profile), else us-east-1 for a non-AWS endpoint; AWS itself needs one."""
        if self._region:
            return self._region
        found = os.environ.get("AWS_REGION") or _session().get_config_variable("region")
        if found:
            return str(found)
        if self.endpoint != AWS:
            return FALLBACK_REGION
        raise errors.ValidationException("no AWS region is configured for --endpoint aws",
                                         hint="set AWS_REGION, give --region, or set a region in your AWS profile")

    def client(self, region: str | None = None) -> Any:
        name = region or self.region()
        client = self._clients.get(name)
        if client is None:
            from botocore.config import Config

            attempts = _max_attempts()
            from .. import __version__

            config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                            retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
                            user_agent_extra=f"kmscli/{__version__}")
            try:
                client = _session().create_client(
                    "kms", region_name=name, endpoint_url=None if self.endpoint == AWS else self.endpoint,
                    config=config)
            except Exception as e:  # botocore's configuration errors (a bad profile, ...)
                raise translate(e, self.where) from None
            self._clients[name] = client
        return client

    def _call(self, operation: str, region: str | None = None, **params: Any) -> dict[str, Any]:
        client = self.client(region)
        request = {k: v for k, v in params.items() if v is not None}
        if self.grant_tokens and "GrantTokens" in client.meta.service_model.operation_model(
                operation).input_shape.members:
            request["GrantTokens"] = list(self.grant_tokens)
        method = getattr(client, _snake(operation))
        try:
            answer = method(**request)
        except Exception as e:
            raise translate(e, self.where) from None
        answer.pop("ResponseMetadata", None)
        return dict(answer)

    def __getattr__(self, name: str) -> Any:
        """Every AWS operation not written out below goes to the remote KMS as it is."""
        if name in VAULT_ONLY:
            def refuse(**_: Any) -> Any:
                raise errors.UnsupportedOperationException(
                    f"this works on the local vault only: {VAULT_ONLY[name]}",
                    hint="run it without --endpoint (unset KMSCLI_ENDPOINT)")
            return refuse
        if not name[:1].isupper() or name.startswith("_"):
            raise AttributeError(name)

        def call(**params: Any) -> dict[str, Any]:
            return self._call(name, **params)
        return call

    # -- operations whose local form differs from AWS's ----------------------------------------
    def CreateKey(self, AliasName: str | None = None, Tags: list[dict[str, str]] | None = None,
                  **params: Any) -> dict[str, Any]:
        """AWS's CreateKey, then CreateAlias for ``keys create --alias`` (the local service does both at once)."""
        if not params.get("BypassPolicyLockoutSafetyCheck"):
            params.pop("BypassPolicyLockoutSafetyCheck", None)
        if params.get("KeySpec") == "SYMMETRIC_DEFAULT" and params.get("KeyUsage") is None:
            params.pop("KeySpec")
        if params.get("Origin") == "AWS_KMS":
            params.pop("Origin")
        created = self._call("CreateKey", Tags=Tags or None, **params)
        if AliasName is not None:
            self._call("CreateAlias", AliasName=AliasName, TargetKeyId=created["KeyMetadata"]["KeyId"])
        return created

    def ListKeys(self, IncludePendingDeletion: bool = True, **params: Any) -> dict[str, Any]:
        """AWS lists every key; without ``--all`` kmscli hides those pending deletion, which takes a
        DescribeKey per key here."""
        page = self._call("ListKeys", **params)
        if not IncludePendingDeletion:
            page["Keys"] = [k for k in page["Keys"] if self._state(k["KeyId"]) != "PendingDeletion"]
        return page

    def _state(self, key_id: str) -> str | None:
        try:
            return str(self._call("DescribeKey", KeyId=key_id)["KeyMetadata"]["KeyState"])
        except errors.AccessDeniedException:
            return None

    def ListKeyDetails(self, IncludePendingDeletion: bool = True, Limit: int | None = None,
                       Marker: str | None = None) -> dict[str, Any]:
        """The ``keys list`` table's rows: ListKeys, the aliases, and DescribeKey where it is allowed."""
        page = self._call("ListKeys", Limit=Limit, Marker=Marker)
        aliases: dict[str, list[str]] = {}
        for item in _every(lambda m: self._call("ListAliases", Marker=m, Limit=100), "Aliases"):
            if "TargetKeyId" in item:
                aliases.setdefault(item["TargetKeyId"], []).append(item["AliasName"])
        rows = []
        for k in page["Keys"]:
            row: dict[str, Any] = {"KeyId": k["KeyId"], "KeyArn": k["KeyArn"], "Aliases": aliases.get(k["KeyId"], [])}
            with contextlib.suppress(errors.AccessDeniedException):
                row["KeyMetadata"] = self._call("DescribeKey", KeyId=k["KeyId"])["KeyMetadata"]
            if IncludePendingDeletion or row.get("KeyMetadata", {}).get("KeyState") != "PendingDeletion":
                rows.append(row)
        page["Keys"] = rows
        return page

    def DescribeKeyDetails(self, KeyId: str) -> dict[str, Any]:
        """The ``keys describe`` table: DescribeKey, its aliases, and tags and rotation where allowed."""
        meta = self._call("DescribeKey", KeyId=KeyId)["KeyMetadata"]
        key_id = meta["KeyId"]
        out: dict[str, Any] = {"KeyMetadata": meta, "Aliases": [
            a["AliasName"] for a in _every(lambda m: self._call("ListAliases", KeyId=key_id, Marker=m), "Aliases")]}
        with contextlib.suppress(errors.AccessDeniedException):
            out["Tags"] = _every(lambda m: self._call("ListResourceTags", KeyId=key_id, Marker=m), "Tags")
        if meta.get("KeySpec") == "SYMMETRIC_DEFAULT" and meta.get("Origin", "AWS_KMS") == "AWS_KMS":
            try:
                status = self._call("GetKeyRotationStatus", KeyId=key_id)
            except (errors.AccessDeniedException, errors.UnsupportedOperationException):
                pass
            else:
                out["Rotation"] = {"Enabled": status["KeyRotationEnabled"],
                                   "PeriodInDays": status.get("RotationPeriodInDays"),
                                   "NextRotationDate": status.get("NextRotationDate"), "MinDecryptVersion": 1}
        return out

    def ListKeyRotations(self, Detail: bool = False, **params: Any) -> dict[str, Any]:
        """AWS's ListKeyRotations; the table's extra columns (version, decrypts) as AWS knows them."""
        page = self._call("ListKeyRotations", **params)
        if Detail:  # the whole list is one page (the CLI asks for 1000): versions count from the original
            rotations = page.get("Rotations", [])
            for n, r in enumerate(rotations, start=1):
                r.setdefault("Version", n)
                r.setdefault("KeyMaterialState", "CURRENT" if n == len(rotations) else "NON_CURRENT")
                r["Decrypts"] = True
        return page

    # -- key policies: "default" is the only policy name AWS has; some KMSes (moto) need it said -----------
    def GetKeyPolicy(self, **params: Any) -> dict[str, Any]:
        answer = self._call("GetKeyPolicy", **{"PolicyName": "default", **params})
        answer.setdefault("PolicyName", "default")  # AWS names it; the policy asked for is the only one there is
        return answer

    def PutKeyPolicy(self, **params: Any) -> dict[str, Any]:
        return self._call("PutKeyPolicy", **{"PolicyName": "default", **params})

    # -- verdicts: AWS raises on a bad signature or MAC; some KMSes (moto) answer False instead ------------
    def Verify(self, **params: Any) -> dict[str, Any]:
        answer = self._call("Verify", **params)
        if answer.get("SignatureValid") is not True:
            raise errors.KMSInvalidSignatureException()
        return answer

    def VerifyMac(self, **params: Any) -> dict[str, Any]:
        answer = self._call("VerifyMac", **params)
        if answer.get("MacValid") is not True:
            raise errors.KMSInvalidMacException()
        return answer

    # -- streaming operations ----------------------------------------------------------------
    def Encrypt(self, KeyId: str, reader: BinaryIO, writer: BinaryIO, EncryptionContext: dict[str, str] | None = None,
                progress: Any = None, EncryptionAlgorithm: str | None = None, Format: str | None = None,
                Signed: bool = True) -> dict[str, Any]:
        """Any amount of data in the ESDK message format (the data key from the remote GenerateDataKey); with an
        RSAES_OAEP_* algorithm, a small message the remote KMS encrypts itself."""
        from .. import envelope

        if EncryptionAlgorithm not in (None, envelope.SYMMETRIC):
            plaintext = envelope.read_small(reader, "plaintext")
            answer = self._call("Encrypt", KeyId=KeyId, Plaintext=plaintext, EncryptionAlgorithm=EncryptionAlgorithm,
                                EncryptionContext=EncryptionContext or None)
            from ..crypto.stream import write_all

            write_all(writer, answer.pop("CiphertextBlob"))
            return answer
        if Format not in (None, envelope.FORMAT_ESDK):
            raise errors.ValidationException(
                "with --endpoint ciphertexts are in the AWS Encryption SDK's format: kmscli's own format wraps "
                "its data key under a vault key", hint="drop --format, or encrypt without --endpoint")
        return envelope.esdk_encrypt(self, KeyId, reader, writer, EncryptionContext or {}, signed=Signed,
                                     progress=progress)

    def Decrypt(self, reader: BinaryIO, writer: BinaryIO, EncryptionContext: dict[str, str] | None = None,
                KeyId: str | None = None, progress: Any = None,
                EncryptionAlgorithm: str | None = None, Esdk: bool = True) -> dict[str, Any]:
        """An ESDK message (streamed), or a KMS ciphertext blob as AWS's Decrypt takes it; a vault ciphertext
        is refused, naming how to move it."""
        from .. import envelope

        kind, reader = envelope.sniff(reader) if Esdk else (None, reader)
        if kind == envelope.FORMAT_ESDK and EncryptionAlgorithm in (None, envelope.SYMMETRIC):
            return envelope.esdk_decrypt(self, reader, writer, EncryptionContext or {}, KeyId, progress=progress)
        if kind == envelope.FORMAT_KMSCLI:
            raise errors.ValidationException(
                "this is a vault ciphertext (kmscli's own format): only the vault that made it can decrypt it",
                hint="decrypt it without --endpoint, or move it to the remote key with 'kmscli --endpoint URL "
                     "reencrypt --key KEY'")
        blob = envelope.read_small(reader, "ciphertextBlob")
        answer = self._call("Decrypt", CiphertextBlob=blob, EncryptionContext=EncryptionContext or None,
                            KeyId=KeyId, EncryptionAlgorithm=EncryptionAlgorithm,
                            region=envelope.arn_region(KeyId))
        from ..crypto.stream import write_all

        write_all(writer, answer.pop("Plaintext"))
        return answer

    def ReEncrypt(self, reader: BinaryIO, writer: BinaryIO, DestinationKeyId: str,
                  SourceEncryptionContext: dict[str, str] | None = None,
                  DestinationEncryptionContext: dict[str, str] | None = None,
                  SourceKeyId: str | None = None, **params: Any) -> dict[str, Any]:
        """Between remote keys. An ESDK message is decrypted and encrypted again here, streaming, the plaintext
        held a chunk at a time; a KMS ciphertext blob goes to the KMS's own ReEncrypt, as AWS's API takes it."""
        from .. import envelope

        kind, reader = envelope.sniff(reader)
        if kind is None:
            from ..crypto.stream import write_all

            algorithms = {k: v for k, v in params.items() if k.endswith("EncryptionAlgorithm")}
            answer = self._call("ReEncrypt", CiphertextBlob=envelope.read_small(reader, "ciphertextBlob"),
                                DestinationKeyId=DestinationKeyId, SourceKeyId=SourceKeyId,
                                SourceEncryptionContext=SourceEncryptionContext or None,
                                DestinationEncryptionContext=DestinationEncryptionContext or None, **algorithms)
            write_all(writer, answer.pop("CiphertextBlob"))
            return answer
        return envelope.reencrypt(self, self, reader, writer, DestinationKeyId, SourceEncryptionContext or {},
                                  DestinationEncryptionContext or {}, SourceKeyId, **params)

    # -- as in the vault's service ------------------------------------------------------------
    @staticmethod
    def GenerateRandom(NumberOfBytes: int) -> bytes:
        from ..service import Kms

        return Kms.GenerateRandom(NumberOfBytes=NumberOfBytes)


def _max_attempts() -> int:
    text = os.environ.get("AWS_MAX_ATTEMPTS") or ""
    if not text:
        return MAX_ATTEMPTS
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise errors.ValidationException(f"AWS_MAX_ATTEMPTS must be a whole number of attempts, 1 or more "
                                         f"(got {text!r})")
    return int(text)


def _snake(operation: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", operation).lower()


def _every(fetch: Any, member: str) -> list[Any]:
    """Every item of a paged List* answer: ``fetch(marker)`` returns one page."""
    items: list[Any] = []
    marker = None
    while True:
        page = fetch(marker)
        items += page.get(member, [])
        marker = page.get("NextMarker") if page.get("Truncated") else None
        if marker is None:
            return items


_SESSION: Any = None


def _session() -> Any:
    """botocore's session, made once: it reads the environment and the AWS config files (tens of ms)."""
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    try:
        import botocore.session
    except ImportError:
        raise errors.UsageError("a remote KMS (--endpoint, a vault's KMS root key) needs botocore, which this "
                                "installation lacks",
                                hint="install the remote extra: pip install 'kmscli[remote]' (from a checkout: "
                                     "pip install '.[remote]')") from None
    _SESSION = botocore.session.get_session()
    return _SESSION


_CLASSES: dict[str, type[errors.KmsError]] = {}


def _known(name: str) -> type[errors.KmsError] | None:
    if not _CLASSES:
        stack: list[type[errors.KmsError]] = [errors.KmsError]
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if cls is not RemoteError:
                _CLASSES.setdefault(cls.name, cls)
    return _CLASSES.get(name)


def translate(e: Exception, where: str) -> errors.KmsError:
    """A botocore failure as kmscli's error: the remote exception's name and words, the SPEC's exit code."""
    from botocore import exceptions as B

    if isinstance(e, errors.KmsError):
        return e
    if isinstance(e, B.ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code") or "RemoteError")
        message = str(error.get("Message") or e)
        if code in CREDENTIAL_CODES:
            return RemoteError(code, f"{where} refused the credentials: {message}", errors.EXIT_REMOTE,
                               hint="check AWS_PROFILE / AWS_ACCESS_KEY_ID and the clock")
        if code in UNAVAILABLE_CODES:
            return RemoteError(code, f"{where} could not answer: {message}", errors.EXIT_REMOTE,
                               hint="try again later")
        if code.isdigit():  # an HTTP status with no KMS error in the body: not a KMS at that address
            return RemoteError(f"HTTP{code}", f"{where} answered HTTP {code}, not as a KMS", errors.EXIT_REMOTE,
                               hint="check the endpoint URL")
        cls = _known(code)
        if cls is not None and cls.exit_code != errors.EXIT_REMOTE:
            found = cls.__new__(cls)
            errors.KmsError.__init__(found, message)
            return found
        return RemoteError(code, f"{where} answered: {message}", errors.EXIT_INTERNAL)
    if isinstance(e, B.NoRegionError):
        return errors.ValidationException("no AWS region is configured", hint="set AWS_REGION or give --region")
    if isinstance(e, B.ParamValidationError):
        return errors.ValidationException(str(e).replace("\n", " "))
    if isinstance(e, (B.NoCredentialsError, B.PartialCredentialsError, B.CredentialRetrievalError)) or \
            type(e).__name__ in ("TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError"):
        return RemoteError(type(e).__name__, f"no usable AWS credentials for {where}: {e}", errors.EXIT_REMOTE,
                           hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(e, (B.EndpointConnectionError, B.ConnectTimeoutError, B.ReadTimeoutError,
                      B.ConnectionClosedError, B.HTTPClientError, B.SSLError)):
        return RemoteError(type(e).__name__, f"cannot reach {where}: {e}", errors.EXIT_REMOTE,
                           hint="check the endpoint URL and that the KMS is running")
    if isinstance(e, B.BotoCoreError):
        return RemoteError(type(e).__name__, f"{where}: {e}", errors.EXIT_REMOTE)
    return RemoteError(type(e).__name__, f"talking to {where}: {e}", errors.EXIT_INTERNAL)

