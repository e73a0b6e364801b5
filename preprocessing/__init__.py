"""Readers and pure array transforms (numpy, OpenCV, pydicom only: no torch, no Triton).

Video layout everywhere: (T, H, W, C) uint8, channels in OpenCV's BGR order.
"""
