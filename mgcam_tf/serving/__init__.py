"""Deployment: the SavedModel export for TF Serving, the one SavedModel loader, the REST/gRPC client.
"""
