"""Write featx/backbones/catalog.json, the listing `featx backbones` shows without importing torch.

Run after upgrading torchvision or changing a built-in backbone (a test fails while the snapshot
disagrees with the live listing; an outdated torchvision version only makes listing slow)::

    python tools/gen_backbone_catalog.py           # catalog.json (seconds)
    python tools/gen_backbone_catalog.py --timm    # also timm_catalog.json (builds every timm
                                                   # architecture on the meta device: minutes)
    python tools/gen_backbone_catalog.py --timm-names   # the same without embedding sizes
                                                        # (seconds; short listings stay live)
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from featx.backbones import catalog

    catalog.PATH.write_text(json.dumps(catalog.build(), indent=1) + "\n")
    print(f"wrote {catalog.PATH}")
    if "--timm" in sys.argv[1:] or "--timm-names" in sys.argv[1:]:
        # one line per entry: diffs stay readable, the file small
        data = catalog.build_timm(dims="--timm" in sys.argv[1:])
        lines = [json.dumps({"timm": data["timm"]})[:-1] + ', "archs": [']
        lines += [",\n".join(json.dumps(a) for a in data["archs"]), '], "tags": [']
        lines += [",\n".join(json.dumps(t) for t in data["tags"]), "]}"]
        catalog.TIMM_PATH.write_text("\n".join(lines) + "\n")
        print(f"wrote {catalog.TIMM_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
