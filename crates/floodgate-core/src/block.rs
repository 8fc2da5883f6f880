//! Blocks: a target refused outright until a time.

use std::fmt;

use crate::clock::Timestamp;

/// Who put a block in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSource {
    /// An operator, through the admin API or the library.
    Manual,
    /// A rule's penalty (`block_for`), named by the rule.
    Rule(String),
}

impl BlockSource {
    /// `manual`, or the rule name.
    pub fn as_str(&self) -> &str {
        match self {
            BlockSource::Manual => "manual",
            BlockSource::Rule(rule) => rule,
        }
    }

    /// The inverse of [`BlockSource::as_str`].
    pub fn parse(s: &str) -> Self {
        if s == "manual" {
            BlockSource::Manual
        } else {
            BlockSource::Rule(s.to_owned())
        }
    }
}

impl fmt::Display for BlockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An active block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// What is blocked: an identity such as `ip:203.0.113.7`,
    /// `ip:203.0.113.0/24` or `header:x-api-key:abc`; for a penalty block,
    /// the rule's key.
    pub target: String,
    /// The block ends at this time.
    pub until: Timestamp,
    /// Why, in the operator's words (or the rule's).
    pub reason: String,
    /// Who put it in place.
    pub source: BlockSource,
}

/// The reason a penalty block is listed with: the rule, and under a
/// block ladder which offence in a row (so which step) it answers.
pub fn penalty_reason(rule: &str, offence: u32) -> String {
    match offence {
        0 => format!("over the limit of rule {rule}"),
        // What the Redis store's reply can carry.
        63.. => format!("over the limit of rule {rule} (offence 63 or more in a row)"),
        n => format!("over the limit of rule {rule} (offence {n} in a row)"),
    }
}
