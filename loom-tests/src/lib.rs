//! Loom model checks live in `tests/`; they build only with `--cfg router_loom`.
