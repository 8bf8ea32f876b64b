//! End-to-end tests of outpost live in `tests/`; this library is empty on purpose.
