"""The embedded default and the choice of endpoint.

llama.cpp's server (through xllamacpp) with a small real model, its launcher, its model cache,
its sampler settings, and the provider.
"""
