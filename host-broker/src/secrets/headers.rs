//! Header scanning and substitution.
