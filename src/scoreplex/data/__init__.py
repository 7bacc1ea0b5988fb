"""Response data: readers and writers of tables, per-task data, splits and the ASAP-SAS loader.

Imports stay light (numpy only at import time; pyarrow and scikit-learn are imported when first needed).
"""

from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.dataset import MISSING, TaskData
from scoreplex.data.readers import ColumnMap, read_responses, read_table, write_table
from scoreplex.data.splits import kfold_split, train_val_split, train_val_test_split, validation_shortfall

__all__ = [
    "MISSING",
    "ColumnMap",
    "TaskData",
    "kfold_split",
    "load_asap_sas",
    "read_responses",
    "read_table",
    "train_val_split",
    "train_val_test_split",
    "validation_shortfall",
    "write_table",
]
