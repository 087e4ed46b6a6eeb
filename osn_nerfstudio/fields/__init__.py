"""Per-object scale-invariant radiance fields."""
