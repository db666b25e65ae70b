"""The deployments the gateway knows and their live signals (in-flight, EWMAs, engine scrapes).

A neutral room: routing, policies, the gateway and the API read and write these objects;
this package imports nothing from any of them.
"""
