"""Datasets in, clear reports out: read tables, detect the schema, validate, report, split and tokenise.

Other packages use what is re-exported here; the modules inside are this package's own business.
"""

from core.data.dataset import (
    ALIASES,
    DEFAULT_MAX_BYTES,
    DataReport,
    Example,
    LoadedData,
    RawTable,
    data_fingerprint,
    label_ids,
    load_data,
    read_table,
    split_train_eval,
)
from core.errors import DataError

__all__ = [
    "ALIASES",
    "DEFAULT_MAX_BYTES",
    "DataError",
    "DataReport",
    "Example",
    "LoadedData",
    "RawTable",
    "data_fingerprint",
    "label_ids",
    "load_data",
    "read_table",
    "split_train_eval",
]
