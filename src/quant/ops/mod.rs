//! Integer operators: one plain scalar reference per operation. Each op is a struct prepared at
//! conversion time (integer weights, multipliers, tables) with a `forward` that uses integer
//! arithmetic only. SIMD variants (a later issue) must be bit-exact to these.
