"""Datasets in, clear reports out: read tables, detect the schema, validate, report, split and tokenise.

Other packages use what is re-exported here; the modules inside (readers, schema, examples, report, split,
dataset, tokenize) are this package's own business.
"""

from core.data.dataset import LoadedData, load_data
from core.data.examples import Example, label_ids
from core.data.readers import DEFAULT_MAX_BYTES, MIB, RawTable, format_size, read_table
from core.data.report import DataReport
from core.data.schema import ALIASES
from core.data.split import data_fingerprint, split_train_eval
from core.errors import DataError

__all__ = [
    "ALIASES",
    "DEFAULT_MAX_BYTES",
    "MIB",
    "DataError",
    "DataReport",
    "Example",
    "LoadedData",
    "RawTable",
    "data_fingerprint",
    "format_size",
    "label_ids",
    "load_data",
    "read_table",
    "split_train_eval",
]
