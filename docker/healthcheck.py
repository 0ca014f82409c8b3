"""Container health check: GET a readiness URL, exit 0 on HTTP 200 and 1 otherwise.

Standard library only, so it runs in every image without curl. The URL comes from the first argument,
else RTDETECT_HEALTHCHECK_URL, else the detect API's /readyz on port RTDETECT_PORT (8000).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    port = os.environ.get("RTDETECT_PORT", "8000")
    url = (
        argv[1]
        if len(argv) > 1
        else os.environ.get("RTDETECT_HEALTHCHECK_URL", f"http://127.0.0.1:{port}/readyz")
    )
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"healthcheck {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
