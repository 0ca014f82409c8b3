"""One list type for settings read from the environment: JSON (`["a", "b"]`) or comma-separated (`a, b`),
as operators type them. The parsing rides on the type, not on a validator method per class, so a subclass
cannot lose it by naming its own validator the same (RTDETECT_MEDIA_API_KEY_HASHES once did)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def split_list(value: Any) -> Any:
    """A string becomes a list (JSON when it starts with `[`, else split on commas); anything else passes."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# NoDecode: pydantic-settings would otherwise insist on JSON for a list-typed variable.
EnvList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
