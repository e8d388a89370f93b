"""Data diagnostics from a store's cached embeddings: duplicates and train/test leakage, likely
label errors, outliers, class overlap, a 2-D map, a report and a cleaning manifest.

=======================  ====================================================================
diagnose                 FeatureSet or store -> :class:`Diagnosis` (:mod:`featx.diagnostics.core`)
Diagnosis                what was found; ``write_report(folder)``, ``manifest_rows()``
read_manifest            a cleaning manifest (key,action,label) -> :class:`Manifest`
apply_manifest           FeatureSet + manifest -> the cleaned FeatureSet
=======================  ====================================================================

The checks work on numpy arrays only (:mod:`featx.diagnostics.checks`,
:mod:`featx.diagnostics.neighbors`); the report (:mod:`featx.diagnostics.report`) is the only
part that plots or reads the source's images and texts.
"""

from __future__ import annotations

from featx.diagnostics.core import Diagnosis, DuplicateGroup, Flag, diagnose, effective_split
from featx.diagnostics.manifest import Manifest, apply_manifest, read_manifest

__all__ = [
    "Diagnosis",
    "DuplicateGroup",
    "Flag",
    "Manifest",
    "apply_manifest",
    "diagnose",
    "effective_split",
    "read_manifest",
]
