"""The `rag` asset group: documents -> chunks -> embeddings -> index, with checks, job and schedule."""

from assets.rag.assets import rag_assets
from assets.rag.checks import rag_checks
from assets.rag.jobs import rag_index_job, rag_nightly_schedule
from assets.rag.partitions import COLLECTIONS, collections_partitions

__all__ = [
    "COLLECTIONS",
    "collections_partitions",
    "rag_assets",
    "rag_checks",
    "rag_index_job",
    "rag_nightly_schedule",
]
