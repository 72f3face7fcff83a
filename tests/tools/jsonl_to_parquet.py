"""Writes a JSONL file's records as a Parquet file (pyarrow): tests/tools/prepare_data_hf.test."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
pq.write_table(pa.Table.from_pylist(rows), sys.argv[2])
