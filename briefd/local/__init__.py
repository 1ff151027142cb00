"""The embedded default and the choice of endpoint.

llama-cpp-python's server with a small real model, its model cache, and the provider.
"""
