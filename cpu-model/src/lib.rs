//! Engine #1 of Lockstep: an emulated, deterministic multi-core x86-64 on
//! unicorn-engine. (Being built; see issue 3.)
