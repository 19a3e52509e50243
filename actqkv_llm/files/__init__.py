"""Files on disk, below every other layer: where caches live, owner-only directories, bounded
reads of regular files only, fsync, removal by rename-then-delete (:mod:`.paths`), and sha256
digests of text and files (:mod:`.digest`). The document cache (:mod:`actqkv_llm.persist`) and
the model cache (:mod:`actqkv_llm.models.cache_dir`) both stand on them.

Light on purpose (no torch): the command line imports it to validate options."""
