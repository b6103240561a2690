"""The model contract: a version written with its signatures and audit metadata (`save`), read
back (`tfprod inspect`), migrated from Keras files (`tfprod migrate`) and warmed up (`warmup`).

    version_dir = tfprod.export.save(model, "models/credit", metadata={"owner": "risk-team", ...})
"""

from tfprod.export.saving import (
    METADATA_SCHEMA,
    ExampleSignature,
    ExportError,
    data_fingerprint,
    save,
    set_method_names,
    validate_metadata,
)
from tfprod.format.audit import METADATA_FILE, read_metadata

__all__ = ["METADATA_FILE", "METADATA_SCHEMA", "ExampleSignature", "ExportError", "data_fingerprint",
           "read_metadata", "save", "set_method_names", "validate_metadata"]
