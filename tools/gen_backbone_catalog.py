"""Write featx/backbones/catalog.json: the torchvision listing, so `featx backbones` needs no torch.

The catalog records, for the installed torchvision version, every classification model with its
embedding size, input size, default weights and checkpoint file name. At run time featx uses it
only when the installed torchvision has exactly that version, and lists live otherwise. Run after
upgrading torchvision (a test fails while the catalog disagrees with the live listing)::

    python tools/gen_backbone_catalog.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "featx" / "backbones" / "catalog.json"


def build() -> dict:
    """The catalog of the installed torchvision, from featx's live listing."""
    import importlib.metadata
    import os
    from urllib.parse import urlparse

    from torchvision.models import get_model_weights

    from featx.backbones import list_backbones
    from featx.backbones.catalog import live_torchvision_infos

    models = []
    for info in live_torchvision_infos(list_backbones):
        w = get_model_weights(info.name).DEFAULT
        models.append(
            {
                "name": info.name,
                "dim": info.dim,
                "input_size": info.input_size,
                "weights": w.name,
                "checkpoint": os.path.basename(urlparse(w.url).path),
            }
        )
    return {"torchvision": importlib.metadata.version("torchvision"), "models": models}


def main() -> int:
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
