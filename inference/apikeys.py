"""API keys for every server: settings hold only SHA-256 hashes of the keys, callers send the key itself.

Shared by the detect API and the media server (each wires it into its own framework); no web framework here.
A key is a random token (`new_key`); the servers keep `sha256(key)` as 64 hex digits, listed in their
settings or in a file (one hash per line, `#` starts a comment), so a leaked configuration grants nothing.
Callers send `Authorization: Bearer <key>`.

    python -m inference.apikeys new           # a new random key and its hash
    python -m inference.apikeys hash < key    # the hash of an existing key (read from stdin)
    python -m inference.apikeys init-secrets  # secrets/ for docker compose: a key per client + the hashes
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.envlist import EnvList

KEY_PREFIX = "rtd_"
_HASH = re.compile(r"[0-9a-f]{64}")


def new_key() -> str:
    """A new key: 32 random bytes, URL-safe (it travels in a header and sits in .env files)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the servers store: the key's SHA-256 as 64 lower-case hex digits. Keys are random, not
    passwords, so a plain (unsalted, fast) hash is enough: there is nothing to guess from a dictionary."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_hashes(text: str, source: str = "api key hashes") -> list[str]:
    """Hashes from a key file's text: one per line, `#` starts a comment, blank lines are skipped."""
    hashes = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hashes.append(_valid_hash(line, f"{source}, line {number}"))
    return hashes


def _valid_hash(value: str, where: str) -> str:
    value = value.strip().lower()
    if not _HASH.fullmatch(value):
        # Most likely the key itself was pasted where its hash belongs: never echo it.
        raise ValueError(
            f"{where}: not a SHA-256 hash (64 hex digits); store `python -m inference.apikeys hash`'s "
            "output, not the key"
        )
    return value


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class ApiKeys:
    """The accepted keys, as digests. `identify(key)` compares in constant time against every hash."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._digests = tuple(dict.fromkeys(bytes.fromhex(_valid_hash(h, "api key hash")) for h in hashes))
        if not self._digests:
            raise ValueError("no API key hashes: authentication would refuse everyone")

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, key: str) -> str | None:
        """The caller's id (`key:` + the first 12 hex digits of its hash: safe to log and to rate-limit by),
        or None for a key that is not accepted.

        Every stored digest is compared, with hmac.compare_digest, whatever matched earlier: the time taken
        depends on the number of keys only, not on how much of a digest a guess got right.
        """
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: bytes | None = None
        for stored in self._digests:
            if hmac.compare_digest(stored, digest):
                found = stored
        return None if found is None else "key:" + found.hex()[:12]


class ApiKeySettings(BaseSettings):
    """Authentication settings, mixed into each server's settings class (its env prefix applies:
    RTDETECT_AUTH, RTDETECT_MEDIA_AUTH, ...). Off by default: `make run` serves on loopback."""

    # A key pasted where its hash belongs must not be echoed into a start-up error (and so the logs).
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    auth: bool = False
    # SHA-256 hashes of the accepted keys (comma-separated or JSON), and/or a file of them (one per line).
    api_key_hashes: EnvList = Field(default_factory=list)
    api_keys_file: Path | None = None
    # With auth on, /metrics needs a key too (Prometheus: `authorization: credentials_file`); false leaves
    # it open for a scraper on a private network.
    metrics_auth: bool = True

    _file_hashes: list[str] = PrivateAttr(default_factory=list)

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        return [_valid_hash(h, f"api_key_hashes[{i}]") for i, h in enumerate(value)]

    @model_validator(mode="after")
    def _load_file(self) -> Self:
        # Read once, when the settings are: a missing or malformed file stops the server at start-up.
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"cannot read api_keys_file {self.api_keys_file}: {e.strerror}") from e
            self._file_hashes = parse_hashes(text, str(self.api_keys_file))
        if self.auth and not self.all_key_hashes():
            raise ValueError("auth is on but no API key is configured (api_key_hashes or api_keys_file)")
        return self

    def all_key_hashes(self) -> list[str]:
        return list(dict.fromkeys([*self.api_key_hashes, *self._file_hashes]))

    def api_keys(self) -> ApiKeys | None:
        """The accepted keys, or None when authentication is off."""
        return ApiKeys(self.all_key_hashes()) if self.auth else None


DEFAULT_CLIENTS = ("ui", "prometheus")
HASHES_FILE = "api_key_hashes"
KEY_SUFFIX = "_api_key"


def init_secrets(directory: Path, clients: Sequence[str] = DEFAULT_CLIENTS) -> list[Path]:
    """Create `<client>_api_key` (a new key) for each client that has none yet, and rewrite
    `api_key_hashes` from every `*_api_key` file in `directory`: the servers' list of accepted keys. Run it
    again after adding or deleting a client's key file. Returns the files it wrote.

    The directory is private to its owner (0700); the files are 0644 because compose bind-mounts each one
    into a container whose user (Prometheus runs as nobody) is not the file's owner."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for client in clients:
        path = directory / f"{client}{KEY_SUFFIX}"
        if not path.exists():
            path.write_text(new_key() + "\n", encoding="utf-8")
            path.chmod(0o644)
            written.append(path)
    lines = ["# sha256 of each accepted API key; written by `python -m inference.apikeys init-secrets`"]
    for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
        key = path.read_text(encoding="utf-8").strip()
        if key:
            lines.append(f"{hash_key(key)}  # {path.name}")
    hashes = directory / HASHES_FILE
    hashes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hashes.chmod(0o644)
    written.append(hashes)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.apikeys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new", help="print a new random key and its SHA-256 hash")
    commands.add_parser("hash", help="print the hash of the key read from stdin")
    init = commands.add_parser(
        "init-secrets", help="create a key file per client (if missing) and the hashes file, for compose"
    )
    init.add_argument("directory", nargs="?", type=Path, default=Path("secrets"))
    init.add_argument(
        "--client", action="append", help=f"client names (default: {', '.join(DEFAULT_CLIENTS)})"
    )
    args = parser.parse_args(argv)
    if args.command == "init-secrets":
        for path in init_secrets(args.directory, args.client or DEFAULT_CLIENTS):
            print(f"wrote {path}")
        return 0
    if args.command == "new":
        key = new_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        print("Give the key to the client (Authorization: Bearer <key>); put only the hash in the server's")
        print("settings (RTDETECT_API_KEY_HASHES, RTDETECT_MEDIA_API_KEY_HASHES) or its api_keys_file.")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
