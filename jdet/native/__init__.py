"""Native (C++) kernels jdet builds on first use; see `jdet.native.onednn`."""
