//! Sluice host broker.
