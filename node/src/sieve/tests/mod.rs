//! The interpreter's tests: compiling (`compile.rs`), running scripts on messages, mostly the
//! RFCs' own examples (`evaluate.rs`), and arbitrary input (`arbitrary.rs`).

mod arbitrary;
mod compile;
mod evaluate;
