"""Ed25519 keys: generate, serialise, load, fingerprint. Key material never goes to logs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from prunegate.errors import KeyFileError, require_file

NOT_PRIVATE = "not a PEM private key (expected the text of a NAME.pem from `prunegate keygen`)"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """sha256 of the DER SubjectPublicKeyInfo: the DSSE `keyid`."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate() -> Ed25519PrivateKey:
    """A new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """The private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_pem(key: Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(pem: bytes, passphrase: bytes | None, source: str) -> Ed25519PrivateKey:
    """Parse a PEM Ed25519 private key, raising KeyFileError with a readable reason."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase or None)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        wanted = (
            "needs a passphrase (set PRUNEGATE_KEY_PASSPHRASE)"
            if "encrypted" in str(exc) and not passphrase
            else "is not encrypted, but a passphrase was given"
        )
        raise KeyFileError(f"the signing key {wanted}", file=source) from None
    except ValueError:
        if passphrase and b"ENCRYPTED" in pem:
            raise KeyFileError(
                "wrong passphrase for the signing key (the one in PRUNEGATE_KEY_PASSPHRASE)", file=source
            ) from None
        raise KeyFileError(NOT_PRIVATE, file=source) from None
    except Exception:  # cryptography raises a few kinds for malformed input
        raise KeyFileError(NOT_PRIVATE, file=source) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"expected an Ed25519 key, found {type(key).__name__}", file=source)
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file. A private key file is refused: whoever verifies
    needs only the public half, and a private key handed around for verifying is no longer private."""
    require_file(path, "public key file", error=KeyFileError)
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(
            "is a private key: verify with its public half (the NAME.pub that `prunegate keygen` wrote) "
            "and keep the private key with the signer",
            file=path,
        )
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:
        raise KeyFileError(
            "not a PEM public key (expected the NAME.pub that `prunegate keygen` wrote)", file=path
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"expected an Ed25519 key, found {type(key).__name__}", file=path)
    return key
