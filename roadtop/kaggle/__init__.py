"""Kaggle: a plan's jobs as kernels (build, push, poll, collect, submit) and the weights dataset."""
