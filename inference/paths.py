"""Default locations; settings classes use these as defaults, library code never reads the environment."""

from __future__ import annotations

from pathlib import Path

import platformdirs

DEFAULT_MODEL_NAME = "nanodet-g"


def default_model_root() -> Path:
    return Path(platformdirs.user_cache_dir("rtdetect")) / "models"


def default_model_dir() -> Path:
    return default_model_root() / DEFAULT_MODEL_NAME
