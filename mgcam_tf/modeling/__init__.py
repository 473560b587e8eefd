"""The network: MSCAN/MGCAM layers, the MGCAM and MSCAN-body models, the four losses (paper Section 3, eq. 5-8).
"""
