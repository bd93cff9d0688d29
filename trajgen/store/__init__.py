"""The trajectory store: its schema (:mod:`trajgen.store.schema`, the one place it is written
down), where a store lives (:mod:`~trajgen.store.location`), its index
(:mod:`~trajgen.store.index`), the run writer (:mod:`~trajgen.store.writer`) and the readers
(:mod:`~trajgen.store.reader`). Everything a caller needs is imported here."""
from trajgen.store.index import (add_to_index, complete_in, complete_runs, drop_from_index, index, is_complete,
                                 run_names, run_summary, set_index)
from trajgen.store.location import (Location, create_store, location, open_store, probe_writable,
                                    shared_location, writing)
from trajgen.store.reader import RunArray, RunRecord, open_run, read_error, run_array
from trajgen.store.schema import (ARRAY_DTYPES, COORD_CHUNK, INDEX_PAGE, MAX_TIME_CHUNK, OPTIONAL_DTYPES,
                                  READABLE_VERSIONS, SCHEMA_VERSION, STORE_KIND, SUMMARY_KEYS, TIME_CHUNK,
                                  NoStore, StoreError, balanced_time_chunk, check_coords, coordinate_arrays,
                                  history_codecs, schema_version, small_codecs, time_chunk_for, versions)
from trajgen.store.writer import RunWriter, create_run_group, finish_run_group
