//! Semantic validation that serde cannot express; errors name the field path.

use super::error::PolicyError;
use super::model::Policy;

impl Policy {
    /// Checks cross-field rules (required `hosts`, distinct placeholders, inject rules, ...).
    pub fn validate(&self) -> Result<(), PolicyError> {
        todo!()
    }
}
