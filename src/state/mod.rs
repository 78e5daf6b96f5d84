//! State analysis: which findings of a run are new, persisting or resolved
//! against another run, and how two JSON documents differ. The functions
//! here are pure; `storage::state` loads their input and applies results.

pub mod json_diff;
pub mod matching;
