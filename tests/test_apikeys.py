"""API keys (inference/apikeys.py) and the per-client rate limiter (inference/ratelimit.py): unit tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from inference.apikeys import ApiKeys, ApiKeySettings, bearer_token, hash_key, new_key, parse_hashes
from inference.ratelimit import RateLimiter, retry_after


class _Settings(ApiKeySettings):
    model_config = SettingsConfigDict(env_prefix="RTDETECT_TEST_", frozen=True)


def test_new_keys_are_random_and_hash_to_64_hex_digits() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("rtd_") and len(key) >= 40
    assert len(hash_key(key)) == 64 and int(hash_key(key), 16) >= 0
    # The known SHA-256 of "abc": what `sha256sum` and every other tool print.
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_identify_accepts_only_stored_keys() -> None:
    a, b = new_key(), new_key()
    keys = ApiKeys([hash_key(a), hash_key(b).upper()])  # upper-case hex is read too
    assert keys.identify(a) == "key:" + hash_key(a)[:12]
    assert keys.identify(b) == "key:" + hash_key(b)[:12]
    assert keys.identify(new_key()) is None
    assert keys.identify("") is None
    assert keys.identify(hash_key(a)) is None  # the hash is not a key
    assert keys.identify(a + " ") is None
    with pytest.raises(ValueError, match="no API key"):
        ApiKeys([])


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic YTpi", None),
        ("abc", None),
        ("Bearer a b", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_key_file_with_comments(tmp_path: Path) -> None:
    a, b = new_key(), new_key()
    path = tmp_path / "keys"
    path.write_text(
        f"# rtdetect API keys\n{hash_key(a)}  # the UI\n\n   {hash_key(b)}\n# {hash_key(new_key())}\n"
    )
    assert parse_hashes(path.read_text()) == [hash_key(a), hash_key(b)]
    settings = _Settings(auth=True, api_keys_file=path, api_key_hashes=[hash_key(a)])
    assert settings.all_key_hashes() == [hash_key(a), hash_key(b)]
    keys = settings.api_keys()
    assert keys is not None and len(keys) == 2 and keys.identify(b) is not None


def test_settings_refuse_a_pasted_key_without_echoing_it(tmp_path: Path) -> None:
    key = new_key()
    with pytest.raises(ValidationError) as info:
        _Settings(api_key_hashes=[key])
    assert key not in str(info.value) and key[:20] not in str(info.value)
    path = tmp_path / "keys"
    path.write_text(key + "\n")
    with pytest.raises(ValidationError, match="line 1") as info:
        _Settings(api_keys_file=path)
    assert key[:20] not in str(info.value)


def test_settings_auth_needs_a_key_and_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no API key"):
        _Settings(auth=True)
    with pytest.raises(ValidationError, match="cannot read"):
        _Settings(api_keys_file=tmp_path / "missing")
    off = _Settings()
    assert off.api_keys() is None and off.metrics_auth


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = new_key(), new_key()
    monkeypatch.setenv("RTDETECT_TEST_AUTH", "true")
    monkeypatch.setenv("RTDETECT_TEST_API_KEY_HASHES", f"{hash_key(a)}, {hash_key(b)}")
    keys = _Settings().api_keys()
    assert keys is not None and keys.identify(a) and keys.identify(b)


def test_cli_new_prints_a_key_and_its_hash() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inference.apikeys", "new"], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines()[:2])
    key, digest = fields["key"].strip(), fields["hash"].strip()
    assert hash_key(key) == digest
    hashed = subprocess.run(
        [sys.executable, "-m", "inference.apikeys", "hash"], input=key + "\n", capture_output=True, text=True
    )
    assert hashed.returncode == 0 and hashed.stdout.strip() == digest


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_bursts_then_refills_per_client() -> None:
    clock = _Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)
    assert retry_after(wait) == "1"
    assert limiter.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0.0
    clock.now += 100.0  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0.0


def test_rate_limiter_keeps_a_bounded_client_table() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_clients=100, clock=_Clock())
    for i in range(10_000):
        limiter.take(f"ip:{i}")
    assert len(limiter) == 100


def test_init_secrets_writes_keys_once_and_the_hashes_of_all(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    out = subprocess.run(
        [sys.executable, "-m", "inference.apikeys", "init-secrets", str(secrets_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("wrote") == 3
    ui_key = (secrets_dir / "ui_api_key").read_text().strip()
    prometheus_key = (secrets_dir / "prometheus_api_key").read_text().strip()
    assert ui_key.startswith("rtd_") and ui_key != prometheus_key
    assert (secrets_dir.stat().st_mode & 0o777) == 0o700  # only its owner gets in
    hashes = secrets_dir / "api_key_hashes"
    assert sorted(parse_hashes(hashes.read_text())) == sorted([hash_key(ui_key), hash_key(prometheus_key)])

    # Again, with one more client: existing keys are kept, the new one is added to the hashes.
    from inference.apikeys import init_secrets

    init_secrets(secrets_dir, ["ui", "prometheus", "scanner"])
    assert (secrets_dir / "ui_api_key").read_text().strip() == ui_key
    keys = _Settings(auth=True, api_keys_file=hashes).api_keys()
    assert keys is not None and len(keys) == 3
    assert keys.identify((secrets_dir / "scanner_api_key").read_text().strip()) is not None


@pytest.mark.parametrize("form", ["comma", "json"])
def test_both_servers_read_their_key_hashes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """As the README documents RTDETECT_API_KEY_HASHES / RTDETECT_MEDIA_API_KEY_HASHES: comma-separated or
    JSON. (The media server refused every value while its allowed_origins splitter shadowed this one.)"""
    from detect_api.settings import Settings as DetectSettings
    from media_server.settings import Settings as MediaSettings

    a, b = new_key(), new_key()
    value = f"{hash_key(a)},{hash_key(b)}" if form == "comma" else f'["{hash_key(a)}", "{hash_key(b)}"]'
    for prefix, settings in (("RTDETECT_", DetectSettings), ("RTDETECT_MEDIA_", MediaSettings)):
        monkeypatch.setenv(f"{prefix}AUTH", "true")
        monkeypatch.setenv(f"{prefix}API_KEY_HASHES", value)
        keys = settings().api_keys()  # type: ignore[call-arg]
        assert keys is not None and keys.identify(a) and keys.identify(b), prefix
    monkeypatch.setenv("RTDETECT_MEDIA_ALLOWED_ORIGINS", "https://a.example, https://b.example:8443")
    assert MediaSettings().allowed_origins == ["https://a.example", "https://b.example:8443"]  # type: ignore[call-arg]
