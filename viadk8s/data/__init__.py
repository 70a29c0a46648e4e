"""Datasets: reading the MVTec layout, generating the synthetic set, resolving a dataset to a folder."""
