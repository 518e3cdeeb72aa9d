"""The stored completions: documents in Blob Storage, their index, filters, ids and usage counters."""
