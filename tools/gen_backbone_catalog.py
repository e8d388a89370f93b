"""Write featx/backbones/catalog.json, the listing `featx backbones` shows without importing torch.

Run after upgrading torchvision or changing a built-in backbone (a test fails while the snapshot
disagrees with the live listing; an outdated torchvision version only makes listing slow)::

    python tools/gen_backbone_catalog.py
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from featx.backbones import catalog

    catalog.PATH.write_text(json.dumps(catalog.build(), indent=1) + "\n")
    print(f"wrote {catalog.PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
