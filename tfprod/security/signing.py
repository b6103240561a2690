"""Signed model versions, in the OpenSSF model-signing format (the `model-signing` package).

A signature is `model.sig` inside the version directory: a Sigstore bundle over the hash of
every other file, signed with an elliptic-curve key (P-256/384/521; works offline). It is
the same file `model_signing sign key` writes, so either tool verifies the other's:

    model_signing verify key VERSION_DIR --signature VERSION_DIR/model.sig --public_key key.pub
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

SIGNATURE_FILE = "model.sig"


def _hashing(model_dir: str, signature: str, ignore: Sequence[str] = ()) -> object:
    from model_signing import hashing

    ignored = [pathlib.Path(p) for p in ignore]
    rel = os.path.relpath(os.path.abspath(signature), os.path.abspath(model_dir))
    if not rel.startswith(".."):
        ignored.append(pathlib.Path(rel))
    return hashing.Config().set_ignored_paths(paths=ignored)


def sign(model_dir: str, private_key: str, *, signature: str = "", password: str | None = None) -> str:
    """Sign every file of `model_dir`; returns the signature's path."""
    from model_signing import signing

    signature = signature or os.path.join(model_dir, SIGNATURE_FILE)
    config = signing.Config().use_elliptic_key_signer(private_key=private_key, password=password)
    config.set_hashing_config(_hashing(model_dir, signature)).sign(model_dir, signature)  # type: ignore[arg-type]
    return signature


class VerificationError(Exception):
    pass


def public_key_file(private_key: str, directory: str, password: str | None = None) -> str:
    """Write the public half of the PEM private key `private_key` into `directory`; its path."""
    from cryptography.hazmat.primitives import serialization

    with open(private_key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password.encode() if password else None)
    path = os.path.join(directory, "signer.pub")
    with open(path, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def verify(model_dir: str, public_keys: Sequence[str], *, signature: str = "", ignore: Sequence[str] = ()) -> str:
    """Return the key that verifies `model_dir`'s signature, or raise VerificationError saying
    why none does (missing signature, files changed/added/removed, untrusted key). `ignore`:
    paths relative to `model_dir` left out of the check (a file about to be replaced)."""
    from model_signing import verifying

    signature = signature or os.path.join(model_dir, SIGNATURE_FILE)
    if not os.path.isfile(signature):
        raise VerificationError(f"it is not signed (no {os.path.basename(signature)}; sign it with "
                                "`tfprod sign VERSION_DIR --private_key KEY`)")
    reasons = []
    for key in public_keys:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key)
        try:
            config.set_hashing_config(_hashing(model_dir, signature, ignore)).verify(  # type: ignore[arg-type]
                model_dir, signature)
        except Exception as e:  # model-signing raises ValueError and crypto errors alike
            reasons.append(_reason(e))
            continue
        return key
    if reasons and all(r == reasons[0] for r in reasons):
        raise VerificationError(reasons[0])
    raise VerificationError("; ".join(f"{os.path.basename(k)}: {r}" for k, r in zip(public_keys, reasons,
                                                                                     strict=True)))


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if "Signature mismatch" in text:
        changed = re.findall(r"Hash mismatch for \\?'(.+?)\\?'", text)
        added = re.findall(r"Extra files found in model '[^']*': ([^\"'\]]+)", text)
        removed = re.findall(r"Missing files in model '[^']*': ([^\"'\]]+)", text)
        parts = [f"{what} {', '.join(names)[:300]}" for what, names in
                 (("changed", changed), ("added", added), ("removed", removed)) if names]
        return f"its files differ from the signed ones: {'; '.join(parts) or text[:300]}"
    if "verif" in text.lower() or "signature" in text.lower() or type(error).__name__ == "InvalidSignature":
        return f"the signature is not from a trusted key ({text[:200]})"
    return f"the signature cannot be checked: {text[:300]}"
