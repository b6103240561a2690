"""`tfprod sign`, `tfprod verify` and `tfprod apikey`."""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from collections.abc import Sequence


def sign(argv: Sequence[str]) -> int:
    return _sign_or_verify("sign", argv)


def verify(argv: Sequence[str]) -> int:
    return _sign_or_verify("verify", argv)


def _sign_or_verify(command: str, argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=f"tfprod {command}", allow_abbrev=False, description=(
        "Sign a model version directory: writes VERSION_DIR/model.sig in the OpenSSF model-signing format"
        if command == "sign" else
        "Check a version directory's signature (VERSION_DIR/model.sig) against trusted public keys"))
    p.add_argument("version_dir", help="a model version directory (holding saved_model.pb)")
    if command == "sign":
        p.add_argument("--private_key", required=True, help="PEM elliptic-curve private key (P-256/384/521)")
        p.add_argument("--password_env", default="", help="environment variable holding the key's password")
    else:
        p.add_argument("--public_key", required=True, action="append",
                       help="PEM public key to trust; repeat for several")
    p.add_argument("--signature", default="", help="signature path (default: VERSION_DIR/model.sig)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.version_dir):
        print(f"tfprod {command}: error: {args.version_dir} is not a directory", file=sys.stderr)
        return 1
    from tfprod.security import signing

    try:
        if command == "sign":
            password = os.environ.get(args.password_env) if args.password_env else None
            path = signing.sign(args.version_dir, args.private_key, signature=args.signature, password=password)
            print(f"signed {args.version_dir}: {path}")
        else:
            key = signing.verify(args.version_dir, args.public_key, signature=args.signature)
            print(f"verified {args.version_dir}: signed by {key}")
    except signing.VerificationError as e:
        print(f"tfprod verify: {args.version_dir} is NOT verified: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as e:
        print(f"tfprod {command}: error: {e}", file=sys.stderr)
        return 1
    return 0


def apikey(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod apikey", allow_abbrev=False, description=(
        "Make a new random API key. The key is printed once, for the caller; the config stores only its hash."))
    p.add_argument("name", help="the caller's name (logs, rate limits)")
    p.add_argument("--scope", action="append", default=[],
                   help="what the key may do, e.g. predict:digits, read:*, admin (repeatable)")
    args = p.parse_args(argv)
    key = "tfp_" + secrets.token_urlsafe(32)
    scopes = ", ".join(f'"{s}"' for s in args.scope or ["predict:*"])
    print(f"# the key for {args.name} (shown once; send it as 'X-API-Key: <key>'):\n{key}\n")
    print("# add to the security config:")
    print(f'[[auth.api_keys]]\nname = "{args.name}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
          f"scopes = [{scopes}]")
    return 0
