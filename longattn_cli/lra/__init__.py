"""Long Range Arena tasks: ListOps (generated here) and byte-level text classification."""
