"""Placeholder until the policies work lands; replaced by the real filters."""
MODEL_AWARE_FILTERS = ()
