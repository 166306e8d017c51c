"""Key generation for local clusters: ed25519 user and host keys in OpenSSH format."""

from __future__ import annotations

from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def generate_keypair(path: Path, comment: str) -> str:
    """Write an ed25519 private key (mode 600) and its .pub; return the public key line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(private)
    line = f"{public.decode()} {comment}"
    path.with_name(path.name + ".pub").write_text(line + "\n", encoding="utf-8")
    return line


def load_public(path: Path) -> paramiko.PKey:
    """The paramiko key object of an OpenSSH private key file."""
    return paramiko.Ed25519Key.from_private_key_file(str(path))
