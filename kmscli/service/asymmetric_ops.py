"""Asymmetric and HMAC keys: Sign, Verify, GetPublicKey, GenerateMac, VerifyMac, DeriveSharedSecret.

The cryptography and AWS's rules for each key spec are `crypto/asymmetric.py`'s;
here each operation resolves its key, checks the policy (with the operation's
condition keys: kms:SigningAlgorithm, kms:MessageType, kms:MacAlgorithm,
kms:KeyAgreementAlgorithm) and the key's state, and is recorded like every call.
A signature, MAC or shared secret leaves only after its record is on disk
(``_read`` appends the record before it returns the answer); a signature or MAC
that does not verify is recorded as the failure it is, never as a success.
"""

from __future__ import annotations

from typing import Any

from ..model import customer_master_key_spec, key_origin, key_spec, key_usage
from ..vault.store import OpenVault
from ._core import Call, Core, material_bytes


class AsymmetricOps(Core):
    def _private(self, ov: OpenVault, key: dict[str, Any]) -> tuple[str, str, bytes, str]:
        """(spec, usage, material, ARN) of a key about to be used; the key must be Enabled."""
        self._require_enabled(ov, key)
        return key_spec(key), key_usage(key), material_bytes(key["Materials"][-1]), self._arn(ov, key)

    # -- Sign and Verify -------------------------------------------------------
    def Sign(self, KeyId: str, Message: bytes, SigningAlgorithm: str, MessageType: str | None = None
             ) -> dict[str, Any]:
        """Sign a message of up to 4096 bytes (RAW), its digest (DIGEST) or, for ML-DSA, its mu (EXTERNAL_MU)."""
        from ..crypto import asymmetric as A

        request = _signing_request(KeyId, SigningAlgorithm, MessageType)
        with self._refusing("Sign", request):
            algorithm, message_type, message = _signing_shape(SigningAlgorithm, MessageType, Message)

        def sign(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:Sign",
                            {"kms:SigningAlgorithm": algorithm, "kms:MessageType": message_type})
            spec, usage, material, arn = self._private(ov, key)
            signature = A.sign(spec, material, algorithm, message, message_type, usage=usage, key_id=arn)
            return {"KeyId": arn, "Signature": signature, "SigningAlgorithm": algorithm}

        return self._read("Sign", request, sign)

    def Verify(self, KeyId: str, Message: bytes, Signature: bytes, SigningAlgorithm: str,
               MessageType: str | None = None) -> dict[str, Any]:
        """Verify: ``SignatureValid`` true, or KMSInvalidSignatureException (exit 6), never a quiet false."""
        from ..crypto import asymmetric as A

        request = _signing_request(KeyId, SigningAlgorithm, MessageType)
        with self._refusing("Verify", request):
            algorithm, message_type, message = _signing_shape(SigningAlgorithm, MessageType, Message)
            signature = A.check_length(Signature, "signature", A.MAX_BLOB)

        def verify(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:Verify",
                            {"kms:SigningAlgorithm": algorithm, "kms:MessageType": message_type})
            spec, usage, material, arn = self._private(ov, key)
            A.verify(spec, material, algorithm, message, signature, message_type, usage=usage, key_id=arn)
            return {"KeyId": arn, "SignatureValid": True, "SigningAlgorithm": algorithm}

        return self._read("Verify", request, verify)

    def GetPublicKey(self, KeyId: str) -> dict[str, Any]:
        """The public half of an asymmetric key as a DER SubjectPublicKeyInfo, with what the key may do."""
        from ..crypto import asymmetric as A

        def get(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GetPublicKey")
            spec, usage = key_spec(key), key_usage(key)
            material = key["Materials"][-1] if key["Materials"] else {}
            if "Material" not in material and spec not in ("SYMMETRIC_DEFAULT", *A.HMAC_KEY_BYTES):
                self._require_enabled(ov, key)  # an imported key pair not (or no longer) in place: no public key
            # Unsupported for HMAC and AES keys, before their material (if any) is looked at.
            public = A.public_key_der(spec, material_bytes(material) if "Material" in material else b"")
            self._require_enabled(ov, key)
            out: dict[str, Any] = {"KeyId": self._arn(ov, key), "PublicKey": public,
                                   **customer_master_key_spec(spec), "KeySpec": spec, "KeyUsage": usage}
            out.update(A.key_algorithms(spec, usage))
            return out

        return self._read("GetPublicKey", {"keyId": KeyId}, get)

    # -- GenerateMac and VerifyMac ------------------------------------------------
    def GenerateMac(self, KeyId: str, Message: bytes, MacAlgorithm: str) -> dict[str, Any]:
        """The HMAC of a message of up to 4096 bytes under an HMAC key."""
        from ..crypto import asymmetric as A

        request = {"keyId": KeyId, "macAlgorithm": MacAlgorithm}
        with self._refusing("GenerateMac", request):
            algorithm, message = _mac_shape(MacAlgorithm, Message)

        def generate(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:GenerateMac", {"kms:MacAlgorithm": algorithm})
            spec, usage, material, arn = self._private(ov, key)
            mac = A.generate_mac(spec, material, algorithm, message, usage=usage, key_id=arn)
            return {"Mac": mac, "MacAlgorithm": algorithm, "KeyId": arn}

        return self._read("GenerateMac", request, generate)

    def VerifyMac(self, KeyId: str, Message: bytes, MacAlgorithm: str, Mac: bytes) -> dict[str, Any]:
        """Check an HMAC in constant time: ``MacValid`` true, or KMSInvalidMacException (exit 6)."""
        from ..crypto import asymmetric as A

        request = {"keyId": KeyId, "macAlgorithm": MacAlgorithm}
        with self._refusing("VerifyMac", request):
            algorithm, message = _mac_shape(MacAlgorithm, Message)
            mac = A.check_length(Mac, "mac", A.MAX_BLOB)

        def verify(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:VerifyMac", {"kms:MacAlgorithm": algorithm})
            spec, usage, material, arn = self._private(ov, key)
            A.verify_mac(spec, material, algorithm, message, mac, usage=usage, key_id=arn)
            return {"KeyId": arn, "MacValid": True, "MacAlgorithm": algorithm}

        return self._read("VerifyMac", request, verify)

    # -- DeriveSharedSecret ---------------------------------------------------------
    def DeriveSharedSecret(self, KeyId: str, KeyAgreementAlgorithm: str, PublicKey: bytes) -> dict[str, Any]:
        """ECDH between a KEY_AGREEMENT key's private half and a peer's public key (DER or PEM SPKI)."""
        from ..crypto import asymmetric as A

        request = {"keyId": KeyId, "keyAgreementAlgorithm": KeyAgreementAlgorithm}
        with self._refusing("DeriveSharedSecret", request):
            algorithm = A.check_enum(KeyAgreementAlgorithm, "KeyAgreementAlgorithmSpec", "keyAgreementAlgorithm")
            A.load_peer_public_key(PublicKey)  # a malformed key is refused before the vault is touched

        def derive(ov: OpenVault, call: Call) -> dict[str, Any]:
            key = self._key(ov, call, KeyId, "kms:DeriveSharedSecret", {"kms:KeyAgreementAlgorithm": algorithm})
            spec, usage, material, arn = self._private(ov, key)
            secret = A.derive_shared_secret(spec, material, PublicKey, algorithm, usage=usage, key_id=arn)
            return {"KeyId": arn, "SharedSecret": secret, "KeyAgreementAlgorithm": algorithm,
                    "KeyOrigin": key_origin(key)}

        return self._read("DeriveSharedSecret", request, derive)


def _signing_request(key_ref: str, algorithm: Any, message_type: Any) -> dict[str, Any]:
    """Sign's and Verify's record (CloudTrail's members): never the message or the signature."""
    return {"keyId": key_ref, "signingAlgorithm": algorithm, "messageType": message_type or "RAW"}


def _signing_shape(algorithm: Any, message_type: Any, message: Any) -> tuple[str, str, bytes]:
    from ..crypto import asymmetric as A

    return (A.check_enum(algorithm, "SigningAlgorithmSpec", "signingAlgorithm"),
            A.check_enum(message_type or "RAW", "MessageType", "messageType"),
            A.check_length(message, "message", A.MAX_MESSAGE))


def _mac_shape(algorithm: Any, message: Any) -> tuple[str, bytes]:
    from ..crypto import asymmetric as A

    return (A.check_enum(algorithm, "MacAlgorithmSpec", "macAlgorithm"),
            A.check_length(message, "message", A.MAX_MESSAGE))
