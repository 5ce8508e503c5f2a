"""Reusable layers that methods are built from: the linear-attention mixer base, feature maps, gated output."""
