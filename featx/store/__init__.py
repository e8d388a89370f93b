"""The feature store: one HDF5 file per (source, backbone, weights, layer, pool, preprocessing).

This package alone knows the file layout; docs/store.md documents it for people reading the files
with plain h5py. Everyone else goes through :func:`load_features`, :func:`store_info` and
:class:`StoreWriter`.

Crash safety
------------
The store file is never modified in place. A run writes its new rows into *parts*: small HDF5
files in ``STORE.parts/``, each written to a temporary name, fsynced and renamed, so a part is
either whole or absent. When the run ends, the old store's kept rows and the parts are merged in
key order into ``STORE.tmp-PID``, which is fsynced and atomically renamed over the store; then
the parts are deleted. A ``kill -9`` at any moment leaves the previous store intact and every
finished part on disk, and the next run resumes from them. A writer holds an exclusive POSIX
record lock (``lockf``) on ``STORE.lock`` for the whole run and writes its pid there, so a second
writer fails at once with an error naming that pid; the kernel releases the lock when the process
dies, and a forked child (a DataLoader worker) never inherits it. The writer deletes
``STORE.lock`` on exit while still holding it (the next writer checks that the file it locked is
still the one at that path), so lock files do not pile up beside stores. A run that finds
nothing to do needs no write access at all: without a writable folder it reads the store
unlocked (readers are safe, see below) and only fails if there is something to write.

Faults
------
Every HDF5 file featx writes goes through :class:`_Sink`, a file object that remembers the first
write error (a full disk, an I/O error) and then lets HDF5 finish and close the file without
touching the disk again; the error is raised after the half-written temporary file is closed and
removed. Without it, HDF5 keeps a file whose last flush failed half-open and the interpreter
crashes at exit. A full disk becomes :class:`~featx.errors.DiskFullError`: one line saying how
much to free and where.

Integrity
---------
The feature matrix and every other chunked dataset are written with HDF5's Fletcher-32 chunk
checksum; every small dataset also carries the SHA-256 of its values (``featx_sha256``: HDF5's
checksum covers a string dataset's references, not the strings) and the file attributes carry
the SHA-256 of all attributes (``attrs_sha256``). :func:`verify_store` reads every chunk and checks
all of it and the schema.

Names that are not valid UTF-8 (possible on Linux) are stored as their raw bytes and read back
with ``surrogateescape``, so they round-trip exactly.

Modules
-------
``config``  what identifies a store (:class:`StoreConfig`) and its default path
``layout``  format names, dataset encodings and checksums, the safe HDF5 writer (``_Sink``)
``read``    opening, the row index, :func:`load_features`, :func:`store_info`
``chunks``  :func:`open_features`: features left on disk, read by rows or blocks
``lock``    the writer lock (``STORE.lock``)
``writer``  :class:`StoreWriter`: parts and the atomic commit; :func:`compact_store`
``segments`` segmented stores: segments, tombstones, the index, compaction
``verify``  :func:`verify_store`
"""

from featx.store.chunks import StoreMatrix
from featx.store.config import FEATURE_DTYPES, StoreConfig, config_difference, default_store_path
from featx.store.layout import CHUNK_BYTES, COPY_ROWS, FORMAT, PART_FORMAT, SCHEMA_VERSION
from featx.store.read import (
    StoreIndex,
    load_features,
    open_features,
    read_config,
    read_index,
    read_output,
    store_info,
    stored_per_row,
)
from featx.store.segments import StoreChange
from featx.store.verify import VerifyReport, verify_store
from featx.store.writer import Rows, StoreWriter, compact_store

__all__ = [
    "CHUNK_BYTES",
    "COPY_ROWS",
    "FEATURE_DTYPES",
    "FORMAT",
    "PART_FORMAT",
    "SCHEMA_VERSION",
    "Rows",
    "StoreConfig",
    "StoreChange",
    "StoreIndex",
    "StoreMatrix",
    "StoreWriter",
    "VerifyReport",
    "compact_store",
    "config_difference",
    "default_store_path",
    "load_features",
    "open_features",
    "read_config",
    "read_index",
    "read_output",
    "store_info",
    "stored_per_row",
    "verify_store",
]
