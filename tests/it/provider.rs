//! Tests of provider.
