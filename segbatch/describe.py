"""The summary `segbatch info` gives of a store: its settings, progress, arrays, problems and who holds it.

A reader of the store, apart from the store module itself (which makes,
opens and records); a job of many inputs is summarised by
`jobstore.describe_job`.
"""

from __future__ import annotations

from typing import Any

from segbatch.lease import describe_lease
from segbatch.location import Location
from segbatch.store import LEGACY_LEDGER, check_ledger, finished_units, ledger_array, open_store, store_attrs
from segbatch.tilestore import tiles_removed


def describe_store(path: Location) -> dict[str, Any]:
    """The summary `segbatch info STORE` prints (and `--json` emits)."""
    root = open_store(path)
    attrs = store_attrs(root)
    check_ledger(root, attrs)
    arrays = {}
    for name, arr in root.arrays():
        if name == LEGACY_LEDGER:
            continue
        arrays[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks), "dims": list(arr.metadata.dimension_names or ())}
    done = len(finished_units(root))
    return {
        "kind": "store",
        "path": str(path),
        "version": attrs.get("version"),
        "status": attrs.get("status"),
        "source": attrs.get("source"),
        "model": attrs.get("model"),
        "samples": attrs.get("samples"),
        "seed": attrs.get("seed"),
        "units": {"finished": done, "total": int(ledger_array(root).shape[0])},
        "arrays": arrays,
        "problems": attrs.get("problems", []),
        "summary": attrs.get("summary"),
        "lease": describe_lease(path),
        "verify": attrs.get("verify"),
        "error": attrs.get("error"),  # why a failed run stopped
        "resumable": not tiles_removed(root, attrs["source"]["kind"]),  # a raster resumes from its tiles/ alone
        "config": attrs.get("config"),  # the settings --resume must be given again
    }
