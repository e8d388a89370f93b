"""Text transfer: the same extract -> store -> heads -> predict loop, on sentence embeddings.

* :mod:`featx.text.sources` reads a CSV / TSV / JSONL table with a text column (and optional
  label, id and split columns) or a folder of ``.txt`` files in class subfolders.
* :mod:`featx.backbones._text` loads a frozen BERT-family encoder: the bundled
  all-MiniLM-L6-v2 (the default) or any local sentence-transformers / Hugging Face folder.
* :mod:`featx.text.engine` tokenizes in length-sorted batches and runs the encoder.

Importing this package is cheap: transformers loads only when an encoder is loaded.
"""

from __future__ import annotations

from featx.text.sources import TextFormat, TextItem, TextSource, is_text_spec, open_text_source

__all__ = ["TextFormat", "TextItem", "TextSource", "is_text_spec", "open_text_source"]
