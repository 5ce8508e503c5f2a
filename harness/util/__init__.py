"""Infrastructure with one copy each: atomic writes, provenance, timing and memory, tensor walks, errors,
code fingerprints."""
