"""Request records, metrics, traces and access logs: observers of the request pipeline."""
