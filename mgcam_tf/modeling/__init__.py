"""The network: MSCAN/MGCAM layers, the MGCAM and MSCAN-body models, the four losses (SPEC §2-3).
"""
