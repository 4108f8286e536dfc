"""Similarity search over the driver's outputs: index a model folder, query it, evaluate it.

Search reads a run's outputs only through `embedkit.results` (the one reader of the output
format) and never reaches back into the run loop.

    from embedkit import results, search
    folder = results.Results("output/embeddings")["melspec"]
    info = search.collection_info(folder, "file")        # or ("segment", window_seconds=1.0)
    with search.Index.open(search.default_store(folder), search.collection_name("melspec"),
                           create=info, writer=True) as index:
        report = search.build_index(folder, index)       # incremental: only new or changed outputs
        hits = index.search(vectors, k=5)                # (Q, D) unit vectors -> Q lists of Hit

Modules: `collection` (what a collection is: CollectionInfo, vectors, Hit, the Store API),
`embedded` (EmbeddedStore), `postgres` (PostgresStore), `index` (Index, build_index),
`query` (QueryEmbedder), `evaluation` (retrieval metrics).

Two stores hold a collection:

- `EmbeddedStore` (default, no server): SQLite (transactions) holds the metadata and the
  id table; vectors live in immutable `.npy` segment files written atomically before the
  transaction that references them; FAISS searches them: exactly (inner product over the
  memory-mapped segments) below `ann_threshold` vectors, through an HNSW index above it
  (vectors added since the HNSW build are searched exactly and merged, removed ones are
  filtered out), so an incremental add of 1 % writes only that 1 %.
- `PostgresStore` (`postgresql://...`): pgvector, HNSW with cosine ops, one transaction per
  batch; exact search is a sequential scan, so both stores give the same top K.

Every stored vector is L2-normalised float32, so inner product = cosine similarity. A rebuild
(`Index.open(..., rebuild=True)`) is built aside under the writer lock and swapped in whole.
"""

from embedkit.extractors.base import ConfigError
from embedkit.search.collection import (
    DEFAULT_ANN_THRESHOLD,
    DEFAULT_EF_SEARCH,
    LEVELS,
    CollectionInfo,
    Hit,
    SearchError,
    Store,
    StoreError,
    check_collection,
    check_collection_name,
    collection_info,
    collection_name,
    config_of,
    describe_config,
    normalize_rows,
    query_vector,
    vectors_from_array,
)
from embedkit.search.evaluation import read_labels, retrieval_metrics
from embedkit.search.index import Index, IndexReport, build_index, default_store, is_postgres
from embedkit.search.query import QueryEmbedder


__all__ = [
    "DEFAULT_ANN_THRESHOLD", "DEFAULT_EF_SEARCH", "LEVELS", "CollectionInfo", "ConfigError", "Hit", "Index",
    "IndexReport", "QueryEmbedder", "SearchError", "Store", "StoreError", "build_index", "check_collection",
    "check_collection_name", "collection_info", "collection_name", "config_of", "default_store",
    "describe_config", "is_postgres", "normalize_rows", "query_vector", "read_labels", "retrieval_metrics",
    "vectors_from_array",
]
