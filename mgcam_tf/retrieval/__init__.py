"""Users' own images: their masks, feature extraction, search and verification.
"""
