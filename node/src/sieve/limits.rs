//! Bounds that keep a hostile script from exhausting memory or time. Sieve has no loops; the
//! remaining ways to do much work are size, nesting, includes and variables, all bounded here.

/// The largest script accepted, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;
/// Nested blocks, and nested tests inside a test (`not not ...`, `anyof(allof(...))`).
pub const MAX_NESTING: usize = 32;
/// How deep `include` may nest (RFC 6609 3.2 asks for a limit).
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// How many `include`s one delivery may run in all.
pub const MAX_INCLUDES: usize = 64;
/// Variables per scope (each script's locals; the globals).
pub const MAX_VARIABLES: usize = 256;
/// The longest variable value, in bytes; longer values are truncated (RFC 5229 3: "a value
/// MAY be truncated").
pub const MAX_VARIABLE_BYTES: usize = 4096;
/// Actions one delivery may produce.
pub const MAX_ACTIONS: usize = 64;
/// How much of a body the body test examines, in bytes (after decoding).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// MIME nesting the body test descends into.
pub const MAX_MIME_DEPTH: usize = 16;
/// Comparison work one delivery may do: characters compared, and for `:matches` pattern x value
/// states (which also bounds the memory of its memo table, one bit a state: 16 MiB).
pub const MAX_MATCH_WORK: u64 = 1 << 27;
